//! Autoinstall files (preseed, kickstart, autoinstall YAML, ...): minijinja templates from
//! `templates_dir`, rendered per node at `GET /node/v1/autoinstall/<mac>`.
//!
//! Templates see: `serial`, `node` (id), `mac` (the requesting MAC), `macs`, `static_ips`
//! (list of `{interface, address, prefix, gateway}`), `hostname`, `agent_url` (the base URL
//! the client used) and `autoinstall_url`. Undefined variables are errors (strict mode): a
//! typo must fail the install loudly rather than render an empty password or disk name.

use std::path::PathBuf;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use protocol::fleet::RackNode;
use protocol::Mac;

use super::ipxe::autoinstall_url;

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template name is not a plain relative path.
    #[error("template name {name:?} refused: {reason}")]
    BadName {
        /// Name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// No such template file.
    #[error("template {name:?} not found at {path}")]
    NotFound {
        /// Name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("template {name:?}: reading {path}")]
    Io {
        /// Name.
        name: String,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Syntax or rendering error.
    #[error("template {name:?} line {}: {source}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
    Render {
        /// Name.
        name: String,
        /// Line of the error, when known.
        line: Option<usize>,
        /// Cause.
        #[source]
        source: minijinja::Error,
    },
}

/// What a template is rendered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeContext {
    /// Chassis serial.
    pub serial: String,
    /// Node id.
    pub node: String,
    /// The MAC that asked.
    pub mac: String,
    /// Every MAC of the node.
    pub macs: Vec<String>,
    /// Static addresses from the expected inventory.
    pub static_ips: Vec<StaticIpCtx>,
    /// Host name: the serial, lowercased, with characters outside `[a-z0-9-]` as `-`
    /// (RackNode carries no host name yet).
    pub hostname: String,
    /// Base URL of this agent as the client reached it.
    pub agent_url: String,
    /// URL of this rendered file.
    pub autoinstall_url: String,
}

/// One static address in a [`NodeContext`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticIpCtx {
    /// Interface label.
    pub interface: String,
    /// Address.
    pub address: String,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway, if any.
    pub gateway: Option<String>,
}

/// The template context of `node` asked for by `mac` through `base_url`. Pure.
pub fn node_context(node: &RackNode, mac: &Mac, base_url: &str) -> NodeContext {
    let hostname: String = node
        .serial
        .as_str()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    NodeContext {
        serial: node.serial.to_string(),
        node: node.id.to_string(),
        mac: mac.to_string(),
        macs: node.macs.iter().map(Mac::to_string).collect(),
        static_ips: node
            .static_ips
            .iter()
            .map(|s| StaticIpCtx {
                interface: s.interface.clone(),
                address: s.address.to_string(),
                prefix: s.prefix,
                gateway: s.gateway.map(|g| g.to_string()),
            })
            .collect(),
        hostname,
        agent_url: base_url.to_owned(),
        autoinstall_url: autoinstall_url(base_url, mac),
    }
}

/// Renders template `name` (its source already read) with `ctx`. Pure.
pub fn render_source(name: &str, source: &str, ctx: &NodeContext) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Keep the file's trailing newline: config files want it.
    env.set_keep_trailing_newline(true);
    let err = |source: minijinja::Error| TemplateError::Render {
        name: name.to_owned(),
        line: source.line(),
        source,
    };
    let tmpl = env.template_from_named_str(name, source).map_err(err)?;
    tmpl.render(ctx).map_err(err)
}

/// The templates directory.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

impl Templates {
    /// Templates under `dir` (read at each request, so edits apply without a restart).
    pub fn new(dir: PathBuf) -> Templates {
        Templates { dir }
    }

    /// Reads and renders template `name`.
    pub async fn render(&self, name: &str, ctx: &NodeContext) -> Result<String, TemplateError> {
        let bad = |reason| TemplateError::BadName {
            name: name.to_owned(),
            reason,
        };
        let segments = super::assets::check_path(name).map_err(bad)?;
        let mut path = self.dir.clone();
        path.extend(segments);
        let source = match tokio::fs::read_to_string(&path).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TemplateError::NotFound {
                    name: name.to_owned(),
                    path,
                })
            }
            Err(source) => {
                return Err(TemplateError::Io {
                    name: name.to_owned(),
                    path,
                    source,
                })
            }
        };
        render_source(name, &source, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::domain::{BootTarget, StaticIp};

    fn node() -> RackNode {
        RackNode {
            id: "00000000-0000-0000-0000-000000000003".parse().unwrap(),
            serial: "SN_03".parse().unwrap(),
            macs: vec!["52:54:00:00:00:03".parse().unwrap()],
            boot_target: BootTarget::Local,
            static_ips: vec![StaticIp {
                interface: "eth0".into(),
                address: "10.0.0.3".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
            switch_ports: vec![],
            bmc: None,
            revision: 1,
            power: None,
        }
    }

    #[test]
    fn renders_and_reports_lines() {
        let n = node();
        let ctx = node_context(&n, &n.macs[0], "http://10.0.0.1:8080");
        assert_eq!(ctx.hostname, "sn-03");
        let out = render_source(
            "t.cfg",
            "host {{ hostname }}\n{% for ip in static_ips %}ip {{ ip.address }}/{{ ip.prefix }} gw {{ ip.gateway }}\n{% endfor %}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "host sn-03\nip 10.0.0.3/24 gw 10.0.0.1\n");
        let e = render_source("t.cfg", "ok\n{{ nope }}\n", &ctx).unwrap_err();
        match e {
            TemplateError::Render { line, .. } => assert_eq!(line, Some(2)),
            other => panic!("{other}"),
        }
        let e = render_source("t.cfg", "a\nb\n{% if %}\n", &ctx).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
