//! The workflow template YAML format: raw serde types (unknown fields refused) and the
//! validated [`Template`], plus parameter files (`kind: WorkflowParams`).
//!
//! ```yaml
//! apiVersion: metalfleet/v1
//! kind: Workflow
//! name: testing
//! version: 1
//! params:
//!   drive_stress: { type: duration, default: 72h, description: fio runtime }
//! include:
//!   - { template: discovery, params: { identify_hook_url: "" } }
//! steps:
//!   - name: drive-stress
//!     kind: node.run
//!     with: { command: fio, args: ["--runtime={{ drive_stress | seconds }}"] }
//!     timeout: 80h
//!     retries: 1
//!     backoff: { initial: 10s, factor: 2, max: 5m }
//!     on_failure: continue            # fail | continue | { goto: STEP }
//!     when: facts.disks.0.size >= 100 # a condition on node facts (see protocol)
//!     idempotent: false
//! ```
//!
//! Included templates run first, in the order listed, then the template's own steps.
//!
//! `lifecycle: { running: commissioning, succeeded: ready, failed: failed }` (each optional)
//! moves the node's lifecycle state when a run enters the template's steps (its includes'
//! included), completes its last step, or fails inside it; the coordinator applies it, only
//! along transitions the lifecycle allows (see `state::runs`).
//! Whatever in a step can be typed is type-checked at load time, substituting each
//! parameter's default (or a sample of its type when it has none); expansion checks again with
//! the real values.

use std::collections::{BTreeMap, BTreeSet};

use protocol::domain::NodeState;
use protocol::workflow::{Condition, HumanDuration, OnFailure, StepKind, API_VERSION};
use serde::Deserialize;
use serde_json::Value;

use super::expand;
use super::{check_name, check_param_name, Problem, Problems};

/// Why a YAML document was refused.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Not YAML, or a shape serde refused (unknown field, wrong type): the message carries
    /// the YAML path and the line.
    #[error("{label}: {message}")]
    Yaml {
        /// File name or other label of the document.
        label: String,
        /// What the YAML parser said.
        message: String,
    },
    /// Parsed, but invalid.
    #[error("{0}")]
    Invalid(Problems),
}

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// Text.
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A duration (`30s`, `72h`); templates see its canonical text, `| seconds` gives the
    /// number of seconds.
    Duration,
    /// A sequence of values.
    List,
    /// A mapping of names to values.
    Map,
}

impl ParamType {
    const NAMES: [(&'static str, ParamType); 6] = [
        ("string", ParamType::String),
        ("int", ParamType::Int),
        ("bool", ParamType::Bool),
        ("duration", ParamType::Duration),
        ("list", ParamType::List),
        ("map", ParamType::Map),
    ];

    fn parse(s: &str) -> Option<ParamType> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, t)| *t)
    }

    /// The name written in templates.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// Check a value against the type; durations come back in canonical text.
    pub fn check(self, v: &Value) -> Result<Value, String> {
        let got = || describe(v);
        match (self, v) {
            (ParamType::String, Value::String(_))
            | (ParamType::Bool, Value::Bool(_))
            | (ParamType::List, Value::Array(_))
            | (ParamType::Map, Value::Object(_)) => Ok(v.clone()),
            (ParamType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(v.clone()),
            (ParamType::Duration, Value::String(s)) => s
                .parse::<HumanDuration>()
                .map(|d| Value::String(d.to_string()))
                .map_err(|_| format!("expected a duration like 30s, 5m, 72h, got {}", got())),
            (ParamType::Duration, _) => Err(format!(
                "expected a duration like 30s, 5m, 72h, got {}",
                got()
            )),
            (ParamType::String, _) => Err(format!(
                "expected a string, got {} (quote it in YAML)",
                got()
            )),
            (ParamType::Int, _) => Err(format!("expected a whole number, got {}", got())),
            (ParamType::Bool, _) => Err(format!("expected true or false, got {}", got())),
            (ParamType::List, _) => Err(format!("expected a list, got {}", got())),
            (ParamType::Map, _) => Err(format!("expected a map, got {}", got())),
        }
    }

    /// A value of the type, used to type-check a template whose parameter has no default.
    pub(crate) fn sample(self, name: &str) -> Value {
        match self {
            ParamType::String => Value::String(name.to_owned()),
            ParamType::Int => Value::from(1),
            ParamType::Bool => Value::Bool(false),
            ParamType::Duration => Value::String("1s".to_owned()),
            ParamType::List => Value::Array(Vec::new()),
            ParamType::Map => Value::Object(serde_json::Map::new()),
        }
    }
}

/// A short description of a JSON value for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Its type.
    pub ty: ParamType,
    /// Its default (already type-checked); `None`: required.
    pub default: Option<Value>,
    /// For operators.
    pub description: String,
}

/// Another template inlined before this one's steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// Its name.
    pub template: String,
    /// Its version (`None`: the newest registered when expanding).
    pub version: Option<u32>,
    /// Prefix of its step names (`PREFIX/step`); the template's name unless `as:` is given.
    pub prefix: String,
    /// Values for its parameters; strings may use this template's parameters (`{{ x }}`).
    pub params: BTreeMap<String, Value>,
}

/// A step as written: fields that may contain `{{ }}` are kept as YAML values until
/// expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTemplate {
    /// Name, unique within the template.
    pub name: String,
    /// Kind name (one of [`StepKind::NAMES`]).
    pub kind: &'static str,
    /// The kind's parameters (`with:`), `{}` when absent.
    pub with: Value,
    /// `timeout:` as written.
    pub timeout: Option<Value>,
    /// `retries:` as written.
    pub retries: Option<Value>,
    /// `backoff:` as written.
    pub backoff: Option<Value>,
    /// What to do after the last failed attempt (goto names a step of this template).
    pub on_failure: OnFailure,
    /// Condition on node facts; may refer to `params.NAME`.
    pub when: Option<Condition>,
    /// Explicit idempotence (else the kind's default).
    pub idempotent: Option<bool>,
    /// For operators.
    pub description: String,
}

/// A validated workflow template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Unique name.
    pub name: String,
    /// Version (≥ 1); a registry holds several versions of a name.
    pub version: u32,
    /// For operators.
    pub description: String,
    /// Declared parameters.
    pub params: BTreeMap<String, ParamSpec>,
    /// Included templates, run first in this order.
    pub includes: Vec<Include>,
    /// Own steps.
    pub steps: Vec<StepTemplate>,
    /// The node lifecycle states a run of these steps moves the node to.
    pub lifecycle: Lifecycle,
    /// The YAML text it was parsed from (what a registry stores).
    pub source: String,
}

/// `lifecycle:` of a template: node states for when a run enters its steps, completes them,
/// or fails inside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// When the run starts the template's first step.
    pub running: Option<NodeState>,
    /// When the template's last step succeeds (or is skipped).
    pub succeeded: Option<NodeState>,
    /// When the run fails in one of the template's steps.
    pub failed: Option<NodeState>,
}

impl Lifecycle {
    /// Whether it moves nothing.
    pub fn is_empty(&self) -> bool {
        self.running.is_none() && self.succeeded.is_none() && self.failed.is_none()
    }
}

/// A parameter file (`kind: WorkflowParams`): values for a workflow's parameters, e.g. lab-sized
/// durations.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsFile {
    /// The workflow they are for.
    pub workflow: String,
    /// Its version (`None`: newest).
    pub version: Option<u32>,
    /// For operators.
    pub description: String,
    /// The values.
    pub params: BTreeMap<String, Value>,
}

/// A parsed YAML document.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// `kind: Workflow`.
    Workflow(Template),
    /// `kind: WorkflowParams`.
    Params(ParamsFile),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    name: String,
    version: u32,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
    #[serde(default)]
    include: Vec<RawInclude>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    lifecycle: RawLifecycle,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    running: Option<String>,
    succeeded: Option<String>,
    failed: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInclude {
    template: String,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default, rename = "as")]
    prefix: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    kind: String,
    #[serde(default)]
    with: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    retries: Option<Value>,
    #[serde(default)]
    backoff: Option<Value>,
    #[serde(default)]
    on_failure: Option<Value>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    idempotent: Option<bool>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParamsFile {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    workflow: String,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    kind: Option<String>,
}

const KIND_WORKFLOW: &str = "Workflow";
const KIND_PARAMS: &str = "WorkflowParams";

fn yaml<T: serde::de::DeserializeOwned>(label: &str, text: &str) -> Result<T, TemplateError> {
    serde_yaml_ng::from_str(text).map_err(|e| TemplateError::Yaml {
        label: label.to_owned(),
        message: e.to_string(),
    })
}

/// Parse a YAML document of either kind; `label` (usually the file name) names it in errors.
pub fn parse_document(label: &str, text: &str) -> Result<Document, TemplateError> {
    let head: Head = yaml(label, text)?;
    match head.kind.as_deref() {
        Some(KIND_WORKFLOW) => Template::parse(label, text).map(Document::Workflow),
        Some(KIND_PARAMS) => ParamsFile::parse(label, text).map(Document::Params),
        other => Err(TemplateError::Invalid(Problems(vec![Problem::new(
            format!("{label}/kind"),
            format!(
                "expected {KIND_WORKFLOW:?} or {KIND_PARAMS:?}, got {}",
                other.map_or("nothing".to_owned(), |k| format!("{k:?}"))
            ),
        )]))),
    }
}

fn check_header(at: &str, api_version: &str, kind: &str, want: &str, out: &mut Vec<Problem>) {
    if api_version != API_VERSION {
        out.push(Problem::new(
            format!("{at}/apiVersion"),
            format!("expected {API_VERSION:?}, got {api_version:?}"),
        ));
    }
    if kind != want {
        out.push(Problem::new(
            format!("{at}/kind"),
            format!("expected {want:?}, got {kind:?}"),
        ));
    }
}

impl ParamsFile {
    /// Parse a `kind: WorkflowParams` document.
    pub fn parse(label: &str, text: &str) -> Result<ParamsFile, TemplateError> {
        let raw: RawParamsFile = yaml(label, text)?;
        let mut problems = Vec::new();
        check_header(
            label,
            &raw.api_version,
            &raw.kind,
            KIND_PARAMS,
            &mut problems,
        );
        if let Err(e) = check_name(&raw.workflow) {
            problems.push(Problem::new(format!("{label}/workflow"), e));
        }
        for name in raw.params.keys() {
            if let Err(e) = check_param_name(name) {
                problems.push(Problem::new(format!("{label}/params.{name}"), e));
            }
        }
        if !problems.is_empty() {
            return Err(TemplateError::Invalid(Problems(problems)));
        }
        Ok(ParamsFile {
            workflow: raw.workflow,
            version: raw.version,
            description: raw.description,
            params: raw.params,
        })
    }
}

/// Location of a step field in error messages.
pub(crate) fn step_at(template: &str, index: usize, name: &str, field: &str) -> String {
    if field.is_empty() {
        format!("{template}/steps[{index}]({name})")
    } else {
        format!("{template}/steps[{index}]({name}).{field}")
    }
}

fn parse_on_failure(v: &Value) -> Result<OnFailure, String> {
    const EXPECTED: &str = "expected fail, continue or {goto: STEP}";
    match v {
        Value::String(s) if s == "fail" => Ok(OnFailure::Fail),
        Value::String(s) if s == "continue" => Ok(OnFailure::Continue),
        Value::Object(m) if m.len() == 1 => match m.get("goto") {
            Some(Value::String(target)) => Ok(OnFailure::Goto(target.clone())),
            Some(other) => Err(format!(
                "goto: expected a step name, got {}",
                describe(other)
            )),
            None => Err(format!("{EXPECTED}, got a map")),
        },
        other => Err(format!("{EXPECTED}, got {}", describe(other))),
    }
}

impl Template {
    /// Parse and validate a `kind: Workflow` document on its own (includes are checked when
    /// the registry expands it: see [`super::TemplateRegistry::check`]).
    pub fn parse(label: &str, text: &str) -> Result<Template, TemplateError> {
        let raw: RawTemplate = yaml(label, text)?;
        let at = if check_name(&raw.name).is_ok() {
            raw.name.clone()
        } else {
            label.to_owned()
        };
        let mut problems = Vec::new();
        check_header(
            &at,
            &raw.api_version,
            &raw.kind,
            KIND_WORKFLOW,
            &mut problems,
        );
        if let Err(e) = check_name(&raw.name) {
            problems.push(Problem::new(format!("{at}/name"), e));
        }
        if raw.version == 0 {
            problems.push(Problem::new(
                format!("{at}/version"),
                "expected a version number of 1 or more",
            ));
        }

        let mut params = BTreeMap::new();
        for (name, p) in raw.params {
            let pat = format!("{at}/params.{name}");
            if let Err(e) = check_param_name(&name) {
                problems.push(Problem::new(&pat, e));
                continue;
            }
            let Some(ty) = ParamType::parse(&p.ty) else {
                problems.push(Problem::new(
                    format!("{pat}.type"),
                    format!(
                        "unknown type {:?}: expected string, int, bool, duration, list or map",
                        p.ty
                    ),
                ));
                continue;
            };
            let default = match p.default.map(|d| ty.check(&d)) {
                Some(Err(e)) => {
                    problems.push(Problem::new(format!("{pat}.default"), e));
                    continue;
                }
                Some(Ok(v)) => Some(v),
                None => None,
            };
            params.insert(
                name,
                ParamSpec {
                    ty,
                    default,
                    description: p.description,
                },
            );
        }

        let mut includes: Vec<Include> = Vec::new();
        let mut prefixes: Vec<(usize, String)> = Vec::new();
        for (i, inc) in raw.include.into_iter().enumerate() {
            let iat = format!("{at}/include[{i}]({})", inc.template);
            if let Err(e) = check_name(&inc.template) {
                problems.push(Problem::new(format!("{iat}.template"), e));
                continue;
            }
            let prefix = inc.prefix.unwrap_or_else(|| inc.template.clone());
            if let Err(e) = check_name(&prefix) {
                problems.push(Problem::new(format!("{iat}.as"), e));
                continue;
            }
            if let Some((j, _)) = prefixes.iter().find(|(_, p)| *p == prefix) {
                problems.push(Problem::new(
                    &iat,
                    format!(
                        "step prefix {prefix:?} is already used by include[{j}]; give one of them a different `as:`"
                    ),
                ));
                continue;
            }
            prefixes.push((i, prefix.clone()));
            if inc.template == raw.name {
                problems.push(Problem::new(&iat, "a template cannot include itself"));
                continue;
            }
            if inc.version == Some(0) {
                problems.push(Problem::new(
                    format!("{iat}.version"),
                    "expected a version number of 1 or more",
                ));
            }
            for name in inc.params.keys() {
                if let Err(e) = check_param_name(name) {
                    problems.push(Problem::new(format!("{iat}.params.{name}"), e));
                }
            }
            includes.push(Include {
                template: inc.template,
                version: inc.version,
                prefix,
                params: inc.params,
            });
        }

        if raw.steps.is_empty() && includes.is_empty() {
            problems.push(Problem::new(
                format!("{at}/steps"),
                "a workflow needs at least one step or include",
            ));
        }
        let names: Vec<&str> = raw.steps.iter().map(|s| s.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut steps = Vec::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let sat = |field: &str| step_at(&at, i, &s.name, field);
            if let Err(e) = check_name(&s.name) {
                problems.push(Problem::new(sat("name"), e));
            } else if !seen.insert(s.name.as_str()) {
                let first = names.iter().position(|n| *n == s.name).unwrap_or(0);
                problems.push(Problem::new(
                    sat("name"),
                    format!("duplicate step name (also steps[{first}])"),
                ));
            }
            let Some(kind) = StepKind::NAMES.iter().find(|k| **k == s.kind) else {
                problems.push(Problem::new(
                    sat("kind"),
                    format!(
                        "unknown step kind {:?}: expected one of {}",
                        s.kind,
                        StepKind::NAMES.join(", ")
                    ),
                ));
                continue;
            };
            let with = match &s.with {
                None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
                Some(w @ Value::Object(_)) => w.clone(),
                Some(other) => {
                    problems.push(Problem::new(
                        sat("with"),
                        format!(
                            "expected a map of {kind} parameters, got {}",
                            describe(other)
                        ),
                    ));
                    continue;
                }
            };
            let on_failure = match s.on_failure.as_ref().map(parse_on_failure) {
                None => OnFailure::Fail,
                Some(Ok(OnFailure::Goto(target))) => {
                    if target == s.name {
                        problems.push(Problem::new(
                            sat("on_failure.goto"),
                            "a step cannot go to itself on failure; use retries",
                        ));
                    } else if !names.contains(&target.as_str()) {
                        problems.push(Problem::new(
                            sat("on_failure.goto"),
                            format!("no step named {target:?} in this template"),
                        ));
                    }
                    OnFailure::Goto(target)
                }
                Some(Ok(other)) => other,
                Some(Err(e)) => {
                    problems.push(Problem::new(sat("on_failure"), e));
                    OnFailure::Fail
                }
            };
            let when = match &s.when {
                None => None,
                Some(text) if text.contains("{{") => {
                    problems.push(Problem::new(
                        sat("when"),
                        "conditions refer to parameters as params.NAME, not {{ NAME }}",
                    ));
                    None
                }
                Some(text) => match Condition::parse(text) {
                    Ok(c) => {
                        for p in c.params() {
                            if !params.contains_key(&p) {
                                problems.push(Problem::new(
                                    sat("when"),
                                    format!("params.{p} is not a declared parameter"),
                                ));
                            }
                        }
                        Some(c)
                    }
                    Err(e) => {
                        problems.push(Problem::new(sat("when"), e.to_string()));
                        None
                    }
                },
            };
            steps.push(StepTemplate {
                name: s.name.clone(),
                kind,
                with,
                timeout: s.timeout.clone(),
                retries: s.retries.clone(),
                backoff: s.backoff.clone(),
                on_failure,
                when,
                idempotent: s.idempotent,
                description: s.description.clone(),
            });
        }

        let mut state = |field: &str, v: &Option<String>| {
            let text = v.as_deref()?;
            match text.parse::<NodeState>() {
                Ok(s) => Some(s),
                Err(e) => {
                    problems.push(Problem::new(format!("{at}/lifecycle.{field}"), e));
                    None
                }
            }
        };
        let lifecycle = Lifecycle {
            running: state("running", &raw.lifecycle.running),
            succeeded: state("succeeded", &raw.lifecycle.succeeded),
            failed: state("failed", &raw.lifecycle.failed),
        };

        let template = Template {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            params,
            includes,
            steps,
            lifecycle,
            source: text.to_owned(),
        };
        if problems.is_empty() {
            // Type-check every step with sample parameter values; only meaningful once the
            // structure is sound.
            problems.extend(expand::check_alone(&template));
        }
        if !problems.is_empty() {
            return Err(TemplateError::Invalid(Problems(problems)));
        }
        Ok(template)
    }

    /// Parameter values for a check without real values: defaults, else a sample of the type.
    pub(crate) fn sample_params(&self) -> BTreeMap<String, Value> {
        self.params
            .iter()
            .map(|(name, spec)| {
                let v = spec.default.clone().unwrap_or_else(|| spec.ty.sample(name));
                (name.clone(), v)
            })
            .collect()
    }
}
