//! Workflow templates (YAML, versioned, validated), their expansion into run plans, and the
//! template registry (issue 6).
//!
//! - [`template`]: the YAML format, parsed in two phases (raw serde with unknown fields
//!   refused → a validated [`Template`]); errors name the template, the step (index and name)
//!   and the field, e.g. `buildout/steps[3](configure-bmc).timeout: expected a duration like
//!   30s, 5m, 72h, got "5 minutes"`.
//! - [`expand`]: includes inlined (step names prefixed, `discovery/pin-ip`), `{{ param }}`
//!   substituted (minijinja, undefined names are errors), every step typed: a
//!   [`protocol::workflow::RunPlan`] for one node.
//! - [`registry`]: templates by name and version, and a loader for a directory of YAML files.
//!
//! Everything here is pure except [`registry::load_dir`], which reads files.
//!
//! YAML goes through `serde_yaml_ng`: `serde_yaml` is archived (no releases since 2024);
//! `serde_yaml_ng` is its maintained fork with the same API and an MSRV (1.64) below ours;
//! `serde-saphyr` needs Rust 1.89 (our `rust-version` is 1.85), and `serde_yml` is deprecated
//! by its own author.

pub mod expand;
pub mod registry;
pub mod template;

#[cfg(test)]
mod examples_tests;
#[cfg(test)]
mod tests;

use std::fmt;

pub use expand::{expand, phases, ExpandError, Phase};
pub use registry::{load_dir, LoadedDir, RegistryError, TemplateRegistry};
pub use template::{
    parse_document, Document, Include, Lifecycle, ParamSpec, ParamType, ParamsFile, StepTemplate,
    Template, TemplateError,
};

/// One thing wrong with a template or an expansion: where (`template/steps[i](name).field`)
/// and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Location, e.g. `buildout/steps[3](configure-bmc).timeout`.
    pub at: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(at: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            at: at.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem found, one per line (validation goes on after the first so an operator
/// fixes a template in one round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Operator-chosen names (templates, steps, include prefixes): 1..=63 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit. `/` is reserved for include prefixes.
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if s.is_empty() || s.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid name {s:?}: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Parameter names: identifiers, so templates can write `{{ name }}` and `params.name`.
pub(crate) fn check_param_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63;
    if !ok {
        return Err(format!(
            "invalid parameter name {s:?}: letters, digits and '_', starting with a letter or '_'"
        ));
    }
    Ok(())
}
