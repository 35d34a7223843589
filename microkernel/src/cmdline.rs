//! Where the node-agent finds its rack agent: `metalfleet.agent=<url>` and
//! `metalfleet.mac=<mac>` on the kernel command line (the iPXE discovery script sets both).

use protocol::node::{CMDLINE_AGENT, CMDLINE_MAC};
use protocol::Mac;

/// What the kernel command line tells the node-agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// The rack agent's HTTP base URL, without a trailing slash.
    pub agent: String,
    /// The MAC the machine network-booted from, if given.
    pub mac: Option<Mac>,
}

/// Why the command line is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// No `metalfleet.agent=`.
    #[error("the kernel command line has no {CMDLINE_AGENT}=<url>")]
    NoAgent,
    /// The URL is not http(s).
    #[error("{CMDLINE_AGENT}={0:?} is not an http:// or https:// URL")]
    BadAgent(String),
    /// The MAC does not parse.
    #[error("{CMDLINE_MAC}={0:?} is not a MAC address")]
    BadMac(String),
}

/// Parses a kernel command line (`/proc/cmdline`).
pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let mut agent = None;
    let mut mac = None;
    for word in cmdline.split_whitespace() {
        if let Some(v) = word
            .strip_prefix(CMDLINE_AGENT)
            .and_then(|r| r.strip_prefix('='))
        {
            agent = Some(v.to_owned());
        } else if let Some(v) = word
            .strip_prefix(CMDLINE_MAC)
            .and_then(|r| r.strip_prefix('='))
        {
            mac = Some(v.parse().map_err(|_| CmdlineError::BadMac(v.to_owned()))?);
        }
    }
    let agent = agent.ok_or(CmdlineError::NoAgent)?;
    if !(agent.starts_with("http://") || agent.starts_with("https://")) {
        return Err(CmdlineError::BadAgent(agent));
    }
    Ok(BootParams {
        agent: agent.trim_end_matches('/').to_owned(),
        mac,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_and_mac() {
        let p = parse("console=ttyS0 metalfleet.agent=http://10.0.0.1:8080/ metalfleet.mac=52-54-00-00-00-01 quiet").unwrap();
        assert_eq!(p.agent, "http://10.0.0.1:8080");
        assert_eq!(p.mac, Some("52:54:00:00:00:01".parse().unwrap()));
        assert_eq!(parse("console=ttyS0"), Err(CmdlineError::NoAgent));
        assert!(matches!(
            parse("metalfleet.agent=ftp://x"),
            Err(CmdlineError::BadAgent(_))
        ));
        assert!(matches!(
            parse("metalfleet.agent=http://x metalfleet.mac=zz"),
            Err(CmdlineError::BadMac(_))
        ));
    }
}
