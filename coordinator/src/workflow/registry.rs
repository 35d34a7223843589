//! Workflow templates by name and version (what the API will store), and a loader for a
//! directory of YAML documents (templates and parameter files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::workflow::RunPlan;
use serde_json::Value;

use super::expand::{expand, ExpandError};
use super::template::{parse_document, Document, ParamsFile, Template, TemplateError};

/// Why a template could not be registered or a directory loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The same name and version is already registered with a different text; versions are
    /// immutable so running plans stay explainable.
    #[error("workflow template {name:?} version {version} is already registered with different content; publish a new version")]
    VersionExists {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Two files of a directory hold the same template name and version.
    #[error("{path}: workflow template {name:?} version {version} is also defined in {first}")]
    DuplicateVersion {
        /// The later file.
        path: PathBuf,
        /// Name.
        name: String,
        /// Version.
        version: u32,
        /// The file that defined it first.
        first: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("reading {path}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document in a file is invalid.
    #[error("{path}: {source}")]
    Document {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: TemplateError,
    },
    /// A loaded template does not expand (include or parameter problems).
    #[error("{path}: {source}")]
    Check {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ExpandError,
    },
}

/// Templates by name, then version.
#[derive(Debug, Clone, Default)]
pub struct TemplateRegistry {
    by_name: BTreeMap<String, BTreeMap<u32, Template>>,
}

impl TemplateRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a template. Registering the same text again is a no-op.
    pub fn insert(&mut self, t: Template) -> Result<(), RegistryError> {
        let versions = self.by_name.entry(t.name.clone()).or_default();
        if let Some(existing) = versions.get(&t.version) {
            if existing.source == t.source {
                return Ok(());
            }
            return Err(RegistryError::VersionExists {
                name: t.name,
                version: t.version,
            });
        }
        versions.insert(t.version, t);
        Ok(())
    }

    /// A template by name; `version` `None` is the newest.
    pub fn get(&self, name: &str, version: Option<u32>) -> Option<&Template> {
        let versions = self.by_name.get(name)?;
        match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        }
    }

    /// Versions registered for `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        self.by_name
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Names of every template, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Expand with real parameter values (see [`expand`]).
    pub fn expand(
        &self,
        name: &str,
        version: Option<u32>,
        params: &BTreeMap<String, Value>,
    ) -> Result<RunPlan, ExpandError> {
        expand(self, name, version, params)
    }

    /// Check that a registered template expands with its includes: defaults, and samples for
    /// parameters without one. Run it on registration, once its includes are registered.
    pub fn check(&self, name: &str, version: Option<u32>) -> Result<RunPlan, ExpandError> {
        let t = self
            .get(name, version)
            .ok_or_else(|| ExpandError::NotFound {
                name: name.to_owned(),
                version,
                have: self.versions(name),
            })?;
        expand(self, name, Some(t.version), &t.sample_params())
    }
}

/// Everything in a directory of workflow YAML files.
#[derive(Debug, Clone, Default)]
pub struct LoadedDir {
    /// The templates.
    pub registry: TemplateRegistry,
    /// Parameter files, by file name.
    pub params: BTreeMap<String, ParamsFile>,
}

/// Load every `*.yaml`/`*.yml` file of `dir` (not recursive), then check that every template
/// expands. Errors name the file.
pub fn load_dir(dir: &Path) -> Result<LoadedDir, RegistryError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RegistryError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut loaded = LoadedDir::default();
    let mut origin: BTreeMap<(String, u32), PathBuf> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_document(&label, &text) {
            Ok(Document::Workflow(t)) => {
                let key = (t.name.clone(), t.version);
                if let Some(first) = origin.get(&key) {
                    return Err(RegistryError::DuplicateVersion {
                        path,
                        name: key.0,
                        version: key.1,
                        first: first.clone(),
                    });
                }
                origin.insert(key, path.clone());
                loaded.registry.insert(t)?;
            }
            Ok(Document::Params(p)) => {
                loaded.params.insert(label, p);
            }
            Err(source) => return Err(RegistryError::Document { path, source }),
        }
    }
    for ((name, version), path) in origin {
        loaded
            .registry
            .check(&name, Some(version))
            .map_err(|source| RegistryError::Check { path, source })?;
    }
    Ok(loaded)
}
