//! The `[dhcp]` config section: raw TOML shape, validation, and the validated subnets the
//! server serves.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::boot::{from_table, ConfigCtx, KeyError};

/// Default lease time handed out in option 51 (RFC 2132 §9.2), in seconds.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// Default time an OFFERed address stays reserved for the client it was offered to.
pub const DEFAULT_OFFER_HOLD_SECS: u32 = 30;
/// Default time an address a client DECLINEd (RFC 2131 §4.3.3) stays out of the pool.
pub const DEFAULT_DECLINE_QUARANTINE_SECS: u32 = 3600;
/// Default file name of the lease database under the agent's data directory.
pub const DEFAULT_LEASE_FILE: &str = "dhcp-leases.redb";
/// Default port the server listens on (RFC 2131 §4.1).
pub const DEFAULT_SERVER_PORT: u16 = 67;
/// Default client port replies go to (RFC 2131 §4.1).
pub const DEFAULT_CLIENT_PORT: u16 = 68;
/// PXE boot-server port (ProxyDHCP REQUESTs, PXE spec 2.1 §2.2.3).
pub const DEFAULT_PXE_PORT: u16 = 4011;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    lease_secs: Option<u32>,
    offer_hold_secs: Option<u32>,
    decline_quarantine_secs: Option<u32>,
    ping_check: Option<bool>,
    lease_file: Option<PathBuf>,
    server_port: Option<u16>,
    client_port: Option<u16>,
    pxe_port: Option<u16>,
    #[serde(default)]
    subnets: Vec<RawSubnet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubnet {
    network: Option<String>,
    interface: Option<String>,
    server_ip: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    #[serde(default)]
    dns: Vec<Ipv4Addr>,
    domain: Option<String>,
    mtu: Option<u16>,
    #[serde(default)]
    pools: Vec<String>,
    #[serde(default)]
    discovery: bool,
    mode: Option<String>,
    router_advertisements: Option<bool>,
}

/// How a subnet is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A full DHCP server (RFC 2131): hands out addresses, NAKs requests for addresses that
    /// are not the client's.
    Authoritative,
    /// ProxyDHCP (PXE spec 2.1): another server hands out addresses; we only answer
    /// `PXEClient` DISCOVERs with boot information and serve boot-server REQUESTs on 4011.
    Proxy,
}

/// An inclusive range of dynamic addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address (inclusive).
    pub end: Ipv4Addr,
}

impl Pool {
    /// Number of addresses in the range (never zero: validation orders the ends).
    pub fn size(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }
}

/// One served IPv4 subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetConfig {
    /// The network (`network`, required). Option 1 (subnet mask) is derived from it.
    pub network: Ipv4Net,
    /// Interface whose broadcast clients this subnet serves (`interface`). `None`: a subnet
    /// served only through relays, matched by the relay's giaddr (RFC 2131 §4.3.1).
    pub interface: Option<String>,
    /// Our address as the clients reach it (`server_ip`, required): option 54 (server
    /// identifier), `siaddr`/next-server, host of the HTTP boot URLs.
    pub server_ip: Ipv4Addr,
    /// Default router, option 3 (`router`). A reservation's `StaticIp.gateway` wins.
    pub router: Option<Ipv4Addr>,
    /// DNS servers, option 6 (`dns`).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name, option 15 (`domain`).
    pub domain: Option<String>,
    /// Interface MTU, option 26 (`mtu`, 68..=65535).
    pub mtu: Option<u16>,
    /// Dynamic ranges `"a.b.c.d-e.f.g.h"` (`pools`), inside `network`, not overlapping.
    pub pools: Vec<Pool>,
    /// Whether unknown MACs get a pool address and the discovery boot (`discovery`, default
    /// false: unknown MACs are ignored and counted).
    pub discovery: bool,
    /// `mode = "authoritative"` (default) or `"proxy"` (ProxyDHCP, no addresses).
    pub mode: Mode,
    /// Answer IPv6 router solicitations on `interface` with an RA carrying M=0, O=0
    /// (`router_advertisements`, default true on subnets with an `interface`) so iPXE does not
    /// wait ~16 s for IPv6 autoconfiguration.
    pub router_advertisements: bool,
}

/// Validated `[dhcp]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpConfig {
    /// Lease time in option 51 (`lease_secs`, default [`DEFAULT_LEASE_SECS`]); T1/T2
    /// (options 58/59) are 1/2 and 7/8 of it (RFC 2131 §4.4.5).
    pub lease_secs: u32,
    /// How long an OFFERed address stays reserved for that client (`offer_hold_secs`,
    /// default [`DEFAULT_OFFER_HOLD_SECS`]).
    pub offer_hold_secs: u32,
    /// How long a DECLINEd address stays out of the pool (`decline_quarantine_secs`, default
    /// [`DEFAULT_DECLINE_QUARANTINE_SECS`]).
    pub decline_quarantine_secs: u32,
    /// The lease database (`lease_file`, default `<data_dir>/dhcp-leases.redb`).
    pub lease_file: PathBuf,
    /// Server port (`server_port`, default 67; tests only).
    pub server_port: u16,
    /// Client port replies go to (`client_port`, default 68; tests only).
    pub client_port: u16,
    /// PXE boot-server port for ProxyDHCP (`pxe_port`, default 4011; tests only).
    pub pxe_port: u16,
    /// Served subnets (`[[dhcp.subnets]]`).
    pub subnets: Vec<SubnetConfig>,
}

impl DhcpConfig {
    /// Validates the section. `ping_check = true` is refused: we never ICMP-probe before an
    /// OFFER (it costs iPXE ~3 s per boot).
    pub fn from_toml(table: toml::Table, ctx: &ConfigCtx) -> Result<DhcpConfig, KeyError> {
        let raw: RawDhcp = from_table(table)?;
        if raw.ping_check == Some(true) {
            return Err(KeyError::new(
                "ping_check",
                "ICMP probing before OFFER is not implemented (it slows iPXE boots); set false or omit",
            ));
        }
        let lease_secs = raw.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if lease_secs < 60 {
            return Err(KeyError::new("lease_secs", "must be at least 60"));
        }
        let offer_hold_secs = raw.offer_hold_secs.unwrap_or(DEFAULT_OFFER_HOLD_SECS);
        if offer_hold_secs == 0 {
            return Err(KeyError::new("offer_hold_secs", "must be at least 1"));
        }
        let lease_file = raw
            .lease_file
            .map(|p| ctx.resolve(p))
            .unwrap_or_else(|| ctx.data_dir.join(DEFAULT_LEASE_FILE));
        if raw.subnets.is_empty() {
            return Err(KeyError::new("subnets", "at least one subnet is required"));
        }
        let mut subnets: Vec<SubnetConfig> = Vec::new();
        for (i, s) in raw.subnets.into_iter().enumerate() {
            let subnet = validate_subnet(i, s)?;
            for (j, other) in subnets.iter().enumerate() {
                if other.network.contains(&subnet.network.network())
                    || subnet.network.contains(&other.network.network())
                {
                    return Err(KeyError::new(
                        format!("subnets[{i}].network"),
                        format!("overlaps subnets[{j}] ({})", other.network),
                    ));
                }
                if subnet.interface.is_some() && other.interface == subnet.interface {
                    return Err(KeyError::new(
                        format!("subnets[{i}].interface"),
                        format!("already served by subnets[{j}]"),
                    ));
                }
            }
            subnets.push(subnet);
        }
        Ok(DhcpConfig {
            lease_secs,
            offer_hold_secs,
            decline_quarantine_secs: raw
                .decline_quarantine_secs
                .unwrap_or(DEFAULT_DECLINE_QUARANTINE_SECS),
            lease_file,
            server_port: raw.server_port.unwrap_or(DEFAULT_SERVER_PORT),
            client_port: raw.client_port.unwrap_or(DEFAULT_CLIENT_PORT),
            pxe_port: raw.pxe_port.unwrap_or(DEFAULT_PXE_PORT),
            subnets,
        })
    }
}

fn validate_subnet(i: usize, s: RawSubnet) -> Result<SubnetConfig, KeyError> {
    let key = |k: &str| format!("subnets[{i}].{k}");
    let network: Ipv4Net = s
        .network
        .ok_or_else(|| KeyError::new(key("network"), "missing (e.g. \"10.10.0.0/24\")"))?
        .parse()
        .map_err(|e| KeyError::new(key("network"), format!("{e}")))?;
    let network = network.trunc();
    if network.prefix_len() > 30 {
        return Err(KeyError::new(
            key("network"),
            "prefix must be /30 or shorter",
        ));
    }
    let server_ip = s
        .server_ip
        .ok_or_else(|| KeyError::new(key("server_ip"), "missing"))?;
    let mode = match s.mode.as_deref() {
        None | Some("authoritative") => Mode::Authoritative,
        Some("proxy") => Mode::Proxy,
        Some(other) => {
            return Err(KeyError::new(
                key("mode"),
                format!("{other:?}: expected \"authoritative\" or \"proxy\""),
            ))
        }
    };
    if let Some(r) = s.router {
        if !network.contains(&r) {
            return Err(KeyError::new(
                key("router"),
                format!("{r} is outside {network}"),
            ));
        }
    }
    if let Some(mtu) = s.mtu {
        if mtu < 68 {
            return Err(KeyError::new(
                key("mtu"),
                "must be at least 68 (RFC 2132 §5.1)",
            ));
        }
    }
    if let Some(d) = &s.domain {
        if d.is_empty() || d.len() > 255 {
            return Err(KeyError::new(key("domain"), "must be 1..=255 characters"));
        }
    }
    if let Some(ifname) = &s.interface {
        if ifname.is_empty() || ifname.len() > 15 {
            return Err(KeyError::new(key("interface"), "must be 1..=15 characters"));
        }
    }
    // On by default wherever there is an interface to answer on: without an RA, iPXE waits
    // ~16 s for IPv6 autoconfiguration on every boot.
    let router_advertisements = s.router_advertisements.unwrap_or(s.interface.is_some());
    if s.interface.is_none() && router_advertisements {
        return Err(KeyError::new(
            key("router_advertisements"),
            "needs an interface to answer router solicitations on",
        ));
    }
    let mut pools: Vec<Pool> = Vec::new();
    for (j, p) in s.pools.iter().enumerate() {
        let pkey = format!("subnets[{i}].pools[{j}]");
        let (a, b) = p
            .split_once('-')
            .ok_or_else(|| KeyError::new(&pkey, "expected \"first-last\""))?;
        let start: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|e| KeyError::new(&pkey, format!("{a:?}: {e}")))?;
        let end: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|e| KeyError::new(&pkey, format!("{b:?}: {e}")))?;
        if start > end {
            return Err(KeyError::new(&pkey, "first address is after the last"));
        }
        if !network.contains(&start) || !network.contains(&end) {
            return Err(KeyError::new(&pkey, format!("not inside {network}")));
        }
        if start == network.network() || end == network.broadcast() {
            return Err(KeyError::new(
                &pkey,
                "must not include the network or broadcast address",
            ));
        }
        let pool = Pool { start, end };
        if pool.contains(server_ip) {
            return Err(KeyError::new(&pkey, "contains server_ip"));
        }
        if let Some(other) = pools
            .iter()
            .position(|o| o.contains(start) || o.contains(end) || pool.contains(o.start))
        {
            return Err(KeyError::new(&pkey, format!("overlaps pools[{other}]")));
        }
        pools.push(pool);
    }
    if mode == Mode::Proxy && !pools.is_empty() {
        return Err(KeyError::new(
            key("pools"),
            "a proxy subnet hands out no addresses",
        ));
    }
    Ok(SubnetConfig {
        network,
        interface: s.interface,
        server_ip,
        router: s.router,
        dns: s.dns,
        domain: s.domain,
        mtu: s.mtu,
        pools,
        discovery: s.discovery,
        mode,
        router_advertisements,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> ConfigCtx {
        ConfigCtx {
            base_dir: "/etc/agent".into(),
            data_dir: "/var/lib/agent".into(),
        }
    }

    fn parse(s: &str) -> Result<DhcpConfig, KeyError> {
        DhcpConfig::from_toml(toml::from_str(s).unwrap(), &ctx())
    }

    #[test]
    fn full_example_parses_with_defaults() {
        let c = parse(
            r#"
            [[subnets]]
            network = "10.10.0.0/24"
            interface = "veth-srv"
            server_ip = "10.10.0.1"
            router = "10.10.0.1"
            dns = ["10.10.0.1"]
            domain = "rack1.example"
            mtu = 1500
            pools = ["10.10.0.100-10.10.0.199"]
            discovery = true
            router_advertisements = true
            "#,
        )
        .unwrap();
        assert_eq!(c.lease_secs, DEFAULT_LEASE_SECS);
        assert_eq!(
            c.lease_file,
            PathBuf::from("/var/lib/agent/dhcp-leases.redb")
        );
        assert_eq!(c.subnets[0].pools[0].size(), 100);
        assert_eq!(c.subnets[0].mode, Mode::Authoritative);
    }

    #[test]
    fn errors_name_the_key() {
        let e =
            parse("bogus = 1\n[[subnets]]\nnetwork = \"10.0.0.0/24\"\nserver_ip = \"10.0.0.1\"")
                .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse("[[subnets]]\nnetwork = \"10.0.0.0/24\"\nserver_ip = \"10.0.0.1\"\npools = [\"10.0.1.1-10.0.1.5\"]")
            .unwrap_err();
        assert_eq!(e.key, "subnets[0].pools[0]");
        let e = parse("[[subnets]]\nserver_ip = \"10.0.0.1\"").unwrap_err();
        assert_eq!(e.key, "subnets[0].network");
        let e =
            parse("[[subnets]]\nnetwork = \"10.0.0.0/24\"\nserver_ip = \"10.0.0.1\"\nmode = \"x\"")
                .unwrap_err();
        assert_eq!(e.key, "subnets[0].mode");
        let e = parse(
            "ping_check = true\n[[subnets]]\nnetwork = \"10.0.0.0/24\"\nserver_ip = \"10.0.0.1\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "ping_check");
    }
}
