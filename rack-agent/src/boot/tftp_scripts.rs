//! Per-node iPXE scripts over TFTP: `ipxe/<mac>` (or `<mac>.ipxe`) is the same script the HTTP
//! server renders for that MAC, its URLs pointing at the agent's HTTP server on the address the
//! client's DHCP subnet knows us by. For iPXE builds that are told to chain a TFTP script.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use protocol::fleet::EventKind;
use protocol::Mac;

use super::http::config::HttpConfig;
use super::http::ipxe::{self, ScriptPolicy};
use super::{BootBackend, EventSink, GeneratedFiles};

/// The TFTP path prefix of per-node scripts.
pub const TFTP_SCRIPT_DIR: &str = "ipxe/";
/// The TFTP file-name suffix form: `<mac>.ipxe`.
pub const TFTP_SCRIPT_SUFFIX: &str = ".ipxe";

/// Renders per-node scripts for the TFTP server.
pub struct TftpScripts {
    backend: Arc<dyn BootBackend>,
    events: Arc<dyn EventSink>,
    http: HttpConfig,
    http_port: u16,
    /// DHCP subnets and our address on each, to pick the host clients reach us at.
    subnets: Vec<(Ipv4Net, IpAddr)>,
}

impl std::fmt::Debug for TftpScripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TftpScripts")
            .field("http_port", &self.http_port)
            .field("subnets", &self.subnets)
            .finish_non_exhaustive()
    }
}

impl TftpScripts {
    /// Scripts rendered with `http`'s policy, pointing at port `http_port` on our address in
    /// the client's subnet (`subnets`: network → our address there).
    pub fn new(
        backend: Arc<dyn BootBackend>,
        events: Arc<dyn EventSink>,
        http: HttpConfig,
        http_port: u16,
        subnets: Vec<(Ipv4Net, IpAddr)>,
    ) -> TftpScripts {
        TftpScripts {
            backend,
            events,
            http,
            http_port,
            subnets,
        }
    }

    /// The address a client at `peer` reaches our HTTP server on: our address in its subnet,
    /// else the HTTP listen address when it names one.
    fn host_for(&self, peer: SocketAddr) -> Option<IpAddr> {
        let from_subnet = match peer.ip() {
            IpAddr::V4(v4) => self
                .subnets
                .iter()
                .find(|(net, _)| net.contains(&v4))
                .map(|(_, ip)| *ip),
            IpAddr::V6(_) => None,
        };
        from_subnet.or_else(|| Some(self.http.listen.ip()).filter(|ip| !ip.is_unspecified()))
    }
}

/// The MAC a script path names, if it is one of ours.
pub fn script_mac(path: &str) -> Option<Mac> {
    let name = path
        .strip_prefix(TFTP_SCRIPT_DIR)
        .or_else(|| path.strip_suffix(TFTP_SCRIPT_SUFFIX))?;
    name.parse().ok()
}

impl GeneratedFiles for TftpScripts {
    fn generate(&self, path: &str, peer: SocketAddr) -> Option<Vec<u8>> {
        let mac = script_mac(path)?;
        let Some(host) = self.host_for(peer) else {
            tracing::warn!(%peer, %mac, "TFTP script request from outside every DHCP subnet");
            return None;
        };
        let base = match host {
            IpAddr::V4(v4) => format!("http://{v4}:{}", self.http_port),
            IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.http_port),
        };
        let node = self.backend.node_by_mac(&mac);
        let policy = ScriptPolicy {
            unknown_macs: self.http.unknown_macs,
            discovery: &self.http.discovery,
        };
        let script = ipxe::render_script(node.as_ref(), &mac, &base, &policy);
        self.events.emit(vec![EventKind::Boot {
            mac,
            node: node.map(|n| n.id),
            detail: format!("tftp {}", script.detail),
        }]);
        Some(script.text.into_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn script_paths() {
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(script_mac("ipxe/52:54:00:12:34:56"), Some(mac));
        assert_eq!(script_mac("ipxe/52-54-00-12-34-56"), Some(mac));
        assert_eq!(script_mac("525400123456.ipxe"), Some(mac));
        assert_eq!(script_mac("undionly.kpxe"), None);
        assert_eq!(script_mac("ipxe/not-a-mac"), None);
    }
}
