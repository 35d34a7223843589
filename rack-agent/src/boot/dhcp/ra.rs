//! IPv6 router advertisements on provisioning interfaces: answers Router Solicitations with
//! an RA saying M=0, O=0 (no DHCPv6, router lifetime 0: we are not a default router), so iPXE
//! finishes IPv6 autoconfiguration at once instead of waiting ~16 s (LAB-NOTES).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::stats::Stats;

/// ICMPv6 Router Solicitation (RFC 4861 §4.1).
const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 Router Advertisement (RFC 4861 §4.2).
const ROUTER_ADVERTISEMENT: u8 = 134;
/// Cur Hop Limit we advertise for hosts' own packets.
const ADVERTISED_HOP_LIMIT: u8 = 64;
/// ND packets must be sent with hop limit 255 (RFC 4861 §6.1.2).
const ND_HOP_LIMIT: u32 = 255;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// A bound RA responder for one interface.
#[derive(Debug)]
pub struct RaResponder {
    ifname: String,
    ifindex: u32,
    socket: tokio::net::UdpSocket,
    packet: Vec<u8>,
}

/// The interface's index and whether it has an IPv6 link-local address, from
/// `/proc/net/if_inet6` (`addr ifindex prefixlen scope flags name`; scope 0x20 = link).
fn link_local(ifname: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_addr, idx, _plen, scope, _flags, name] if *name == ifname && *scope == "20" => {
                u32::from_str_radix(idx, 16).ok()
            }
            _ => None,
        }
    })
}

fn mac_of(ifname: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).ok()?;
    let m: protocol::Mac = s.trim().parse().ok()?;
    Some(m.0)
}

/// The RA we send: no flags, router lifetime 0, no prefixes; source link-layer address
/// option when the interface has a MAC. The kernel fills in the ICMPv6 checksum.
fn advertisement(mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![
        ROUTER_ADVERTISEMENT,
        0,
        0,
        0,
        ADVERTISED_HOP_LIMIT,
        0, // M=0, O=0
        0,
        0, // router lifetime 0
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retrans timer: unspecified
    ];
    if let Some(m) = mac {
        p.extend_from_slice(&[1, 1]);
        p.extend_from_slice(&m);
    }
    p
}

impl RaResponder {
    /// Binds a raw ICMPv6 socket on `ifname`. `Ok(None)` (logged once) when the interface
    /// has no IPv6 link-local address: RA is skipped there, it is not an error.
    pub fn bind(ifname: &str) -> std::io::Result<Option<RaResponder>> {
        let Some(ifindex) = link_local(ifname) else {
            tracing::warn!(
                interface = ifname,
                "no IPv6 link-local address; router advertisements skipped"
            );
            return Ok(None);
        };
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        s.bind_device(Some(ifname.as_bytes()))?;
        s.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
        s.set_multicast_hops_v6(ND_HOP_LIMIT)?;
        s.set_unicast_hops_v6(ND_HOP_LIMIT)?;
        s.set_nonblocking(true)?;
        // A raw socket reads and writes whole ICMPv6 messages; UdpSocket is only the safe
        // wrapper for recvfrom/sendto on it.
        let std: UdpSocket = s.into();
        Ok(Some(RaResponder {
            ifname: ifname.to_owned(),
            ifindex,
            socket: tokio::net::UdpSocket::from_std(std)?,
            packet: advertisement(mac_of(ifname)),
        }))
    }

    /// Answers solicitations until cancelled: unicast to a solicitor with an address
    /// (RFC 4861 §6.2.6 allows it), else to all-nodes.
    pub async fn run(self, stats: Arc<Stats>, cancel: CancellationToken) {
        let mut buf = [0u8; 1500];
        let mut warned = false;
        loop {
            let (n, src) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            if n < 8 || buf.first() != Some(&ROUTER_SOLICITATION) || buf.get(1) != Some(&0) {
                continue;
            }
            let dest = match src {
                SocketAddr::V6(a) if !a.ip().is_unspecified() => {
                    SocketAddrV6::new(*a.ip(), 0, 0, self.ifindex)
                }
                _ => SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex),
            };
            match self.socket.send_to(&self.packet, dest).await {
                Ok(_) => stats.ra_sent(),
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(interface = %self.ifname, error = %e, "router advertisement not sent");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_has_no_flags_and_zero_lifetime() {
        let p = advertisement(Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(p.len(), 24);
        assert_eq!(p.first(), Some(&134));
        assert_eq!(p.get(5), Some(&0));
        assert_eq!(p.get(6..8), Some(&[0u8, 0][..]));
        assert_eq!(p.get(16..18), Some(&[1u8, 1][..]));
    }
}
