//! The DHCP decision: a pure function of (decoded request, where it arrived, the client's
//! node, the lease table, the clock) → reply and lease writes, or a counted drop. No sockets;
//! RFC 2131 §4.3 server behaviour and the PXE/ProxyDHCP extensions live here.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use protocol::fleet::RackNode;
use protocol::Mac;

use super::config::{DhcpConfig, Mode, SubnetConfig};
use super::leases::{bound_record, quarantine_record, Entry, LeaseTable, LeaseWrite, State};
use super::pxe::{self, BootDecision, BootInput, ClientKind, IPXE_NO_PXEDHCP, OPT_IPXE_ENCAP};
use super::stats::Drop;

/// Where a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// On the server port of the socket bound to subnet `.0`'s interface.
    Interface(usize),
    /// On the server port of the socket bound to no device (relayed or unicast traffic).
    Unbound,
    /// On the PXE boot-server port (4011), bound to subnet `.0`'s interface if any.
    Pxe(Option<usize>),
}

/// Fixed inputs of the handler.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The validated config.
    pub config: &'a DhcpConfig,
    /// The agent's HTTP boot server port, if any.
    pub http_port: Option<u16>,
    /// Unix seconds now.
    pub now: u64,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255 on the client port, out of the receiving interface.
    Broadcast,
    /// A unicast address (relay, renewing client, PXE boot-server client).
    Unicast(SocketAddrV4),
}

/// What to do with a request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The reply and where it goes.
    pub reply: Option<(Message, Dest)>,
    /// Lease changes to make durable; the reply (if any) waits for them.
    pub writes: Vec<LeaseWrite>,
    /// Why nothing was sent (counted), if so.
    pub dropped: Option<Drop>,
    /// A lease was bound at a new address (emit `EventKind::Lease`).
    pub lease_event: Option<(Mac, Ipv4Addr)>,
    /// The boot decision made, to report (deduplicated by the caller).
    pub boot: Option<(Mac, BootDecision)>,
}

impl Outcome {
    fn drop(why: Drop) -> Outcome {
        Outcome {
            dropped: Some(why),
            ..Outcome::default()
        }
    }
}

/// The client MAC of a request (the listener has checked htype/hlen already).
pub fn client_mac(msg: &Message) -> Option<Mac> {
    let c = msg.chaddr();
    let b: [u8; 6] = c.get(..6)?.try_into().ok()?;
    Some(Mac(b))
}

/// The subnet a request belongs to: giaddr ≠ 0 → the subnet containing giaddr; else the
/// receiving socket's interface subnet; else (unbound socket, e.g. a relayed client renewing
/// by unicast) the subnet containing ciaddr; else none.
pub fn select_subnet(config: &DhcpConfig, msg: &Message, arrival: Arrival) -> Option<usize> {
    let containing = |ip: Ipv4Addr| config.subnets.iter().position(|s| s.network.contains(&ip));
    if !msg.giaddr().is_unspecified() {
        return containing(msg.giaddr());
    }
    match arrival {
        Arrival::Interface(i) | Arrival::Pxe(Some(i)) => Some(i),
        Arrival::Unbound | Arrival::Pxe(None) => {
            if msg.ciaddr().is_unspecified() {
                None
            } else {
                containing(msg.ciaddr())
            }
        }
    }
}

/// A node's reservation in `subnet`: the `StaticIp` on the interface whose expected NIC has
/// this MAC; else the node's only non-`bmc` IPv4 static address in the subnet.
pub fn reservation(
    node: &RackNode,
    mac: Mac,
    subnet: &SubnetConfig,
) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    let v4 = |s: &protocol::domain::StaticIp| match s.address {
        std::net::IpAddr::V4(a) if subnet.network.contains(&a) => Some((
            a,
            match s.gateway {
                Some(std::net::IpAddr::V4(g)) => Some(g),
                _ => None,
            },
        )),
        _ => None,
    };
    let nic_names: Vec<&str> = node
        .switch_ports
        .iter()
        .filter(|n| n.mac == Some(mac))
        .map(|n| n.name.as_str())
        .collect();
    if let Some(r) = node
        .static_ips
        .iter()
        .filter(|s| nic_names.contains(&s.interface.as_str()))
        .find_map(v4)
    {
        return Some(r);
    }
    let mut candidates = node
        .static_ips
        .iter()
        .filter(|s| s.interface != "bmc")
        .filter_map(v4);
    match (candidates.next(), candidates.next()) {
        (Some(r), None) => Some(r),
        _ => None,
    }
}

/// Handles one decoded BOOTREQUEST from `src`. `node` is the backend's answer for the MAC.
pub fn handle(
    ctx: &Ctx<'_>,
    table: &mut LeaseTable,
    msg: &Message,
    arrival: Arrival,
    src: SocketAddrV4,
    node: Option<&RackNode>,
) -> Outcome {
    let Some(mtype) = msg.opts().msg_type() else {
        return Outcome::drop(Drop::NoMessageType);
    };
    let Some(mac) = client_mac(msg) else {
        return Outcome::drop(Drop::BadHardwareAddress);
    };
    let Some(si) = select_subnet(ctx.config, msg, arrival) else {
        return Outcome::drop(Drop::NoSubnet);
    };
    let Some(subnet) = ctx.config.subnets.get(si) else {
        return Outcome::drop(Drop::NoSubnet);
    };
    let known = node.is_some();
    if !known && !subnet.discovery {
        return Outcome::drop(Drop::UnknownClient);
    }
    let c = Client {
        ctx,
        msg,
        mac,
        si,
        subnet,
        node,
        src,
    };
    let mut outcome = match (subnet.mode, arrival) {
        (Mode::Proxy, Arrival::Pxe(_)) | (Mode::Authoritative, Arrival::Pxe(_)) => {
            c.pxe_port_request(mtype)
        }
        (Mode::Proxy, _) => c.proxy(mtype),
        (Mode::Authoritative, _) => match mtype {
            MessageType::Discover => c.discover(table),
            MessageType::Request => c.request(table),
            MessageType::Decline => c.decline(table),
            MessageType::Release => c.release(table),
            MessageType::Inform => c.inform(),
            _ => Outcome::drop(Drop::NotServed),
        },
    };
    // An OS DHCP client is not network-booting: no boot decision to report.
    if pxe::classify(msg.opts()) == ClientKind::Plain {
        outcome.boot = None;
    }
    outcome
}

struct Client<'a> {
    ctx: &'a Ctx<'a>,
    msg: &'a Message,
    mac: Mac,
    si: usize,
    subnet: &'a SubnetConfig,
    node: Option<&'a RackNode>,
    src: SocketAddrV4,
}

/// How a REQUEST was sent (RFC 2131 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    Selecting,
    InitReboot,
    Renewing,
}

impl Client<'_> {
    fn config(&self) -> &DhcpConfig {
        self.ctx.config
    }

    fn relayed(&self) -> bool {
        !self.msg.giaddr().is_unspecified()
    }

    fn boot(&self) -> BootDecision {
        pxe::decide(&BootInput {
            kind: pxe::classify(self.msg.opts()),
            target: self.node.map(|n| &n.boot_target),
            server_ip: self.subnet.server_ip,
            http_port: self.ctx.http_port,
            mac: self.mac,
        })
    }

    /// The address this client is entitled to without asking: (address, gateway override,
    /// is a reservation). `Err` when the client cannot be served.
    fn reserved(
        &self,
        table: &mut LeaseTable,
    ) -> Result<Option<(Ipv4Addr, Option<Ipv4Addr>)>, Drop> {
        let Some(r) = self
            .node
            .and_then(|n| reservation(n, self.mac, self.subnet))
        else {
            return Ok(None);
        };
        table.note_reserved(r.0);
        if !table.free_for(r.0, self.mac, self.ctx.now) {
            tracing::warn!(mac = %self.mac, ip = %r.0, "reservation is held by another client's lease");
            return Err(Drop::ReservationConflict);
        }
        Ok(Some(r))
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.subnet.pools.iter().any(|p| p.contains(ip))
    }

    /// A pool address usable by this client right now.
    fn pool_ok(&self, table: &LeaseTable, ip: Ipv4Addr) -> bool {
        self.in_pool(ip) && !table.is_reserved(ip) && table.free_for(ip, self.mac, self.ctx.now)
    }

    fn discover(&self, table: &mut LeaseTable) -> Outcome {
        let now = self.ctx.now;
        let (ip, gateway) = match self.reserved(table) {
            Err(d) => return Outcome::drop(d),
            Ok(Some(r)) => r,
            Ok(None) => {
                let previous = table
                    .by_client(self.si, self.mac)
                    .map(|(ip, _)| ip)
                    .filter(|ip| self.pool_ok(table, *ip));
                let requested = match self.msg.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(ip)) => {
                        Some(*ip).filter(|ip| self.pool_ok(table, *ip))
                    }
                    _ => None,
                };
                match previous
                    .or(requested)
                    .or_else(|| table.allocate(self.si, &self.subnet.pools, now))
                {
                    Some(ip) => (ip, None),
                    None => {
                        tracing::warn!(mac = %self.mac, network = %self.subnet.network, "dhcp pool exhausted");
                        return Outcome::drop(Drop::PoolExhausted);
                    }
                }
            }
        };
        // A bound lease stays bound (and keeps its expiry); anything else is held for the offer.
        let bound_here = table
            .holder(ip, now)
            .is_some_and(|e| e.state == State::Bound && e.mac == Some(self.mac));
        if !bound_here {
            table.set(
                ip,
                Entry {
                    mac: Some(self.mac),
                    subnet: self.si,
                    state: State::Offered,
                    expires: now + u64::from(self.config().offer_hold_secs),
                },
            );
        }
        let boot = self.boot();
        let mut reply = self.base(MessageType::Offer);
        reply.set_yiaddr(ip);
        self.lease_options(&mut reply, gateway, true);
        apply_boot(&mut reply, &boot);
        Outcome {
            reply: Some((reply, self.dest_for_lease())),
            boot: Some((self.mac, boot)),
            ..Outcome::default()
        }
    }

    fn request(&self, table: &mut LeaseTable) -> Outcome {
        let now = self.ctx.now;
        let opts = self.msg.opts();
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
            _ => None,
        };
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let ciaddr = Some(self.msg.ciaddr()).filter(|a| !a.is_unspecified());
        let (state, ip) = match (server_id, requested, ciaddr) {
            (Some(sid), _, _) if sid != self.subnet.server_ip => {
                // The client took another server's offer: release what we held for it.
                if let Some((ip, e)) = table.by_client(self.si, self.mac) {
                    if e.state == State::Offered {
                        table.remove(ip);
                    }
                }
                return Outcome::drop(Drop::OtherServer);
            }
            (Some(_), Some(ip), _) | (Some(_), None, Some(ip)) => (ReqState::Selecting, ip),
            (None, Some(ip), None) => (ReqState::InitReboot, ip),
            (None, _, Some(ip)) => (ReqState::Renewing, ip),
            _ => return Outcome::drop(Drop::NoAddress),
        };
        let entitled = match self.reserved(table) {
            Err(d) => return Outcome::drop(d),
            Ok(Some((r, gw))) => Some((r, gw)),
            Ok(None) => match table.by_client(self.si, self.mac) {
                Some((held, _)) if self.pool_ok(table, held) => Some((held, None)),
                // No record (lost offer hold, or a client we forgot): a free pool address the
                // client already uses is adopted rather than NAKed.
                _ if self.pool_ok(table, ip) => Some((ip, None)),
                _ => None,
            },
        };
        match entitled {
            Some((e, gateway)) if e == ip => {
                let previous = table.holder(ip, now).copied();
                let expires = now + u64::from(self.config().lease_secs);
                let evicted = table.set(
                    ip,
                    Entry {
                        mac: Some(self.mac),
                        subnet: self.si,
                        state: State::Bound,
                        expires,
                    },
                );
                let new_binding =
                    !previous.is_some_and(|p| p.state == State::Bound && p.mac == Some(self.mac));
                let boot = self.boot();
                let mut reply = self.base(MessageType::Ack);
                reply.set_yiaddr(ip);
                reply.set_ciaddr(self.msg.ciaddr());
                self.lease_options(&mut reply, gateway, true);
                apply_boot(&mut reply, &boot);
                Outcome {
                    reply: Some((reply, self.dest_for_lease())),
                    writes: std::iter::once(LeaseWrite {
                        ip,
                        record: Some(bound_record(self.mac, expires)),
                    })
                    .chain(evicted.map(|old| LeaseWrite {
                        ip: old,
                        record: None,
                    }))
                    .collect(),
                    lease_event: new_binding.then_some((self.mac, ip)),
                    boot: Some((self.mac, boot)),
                    dropped: None,
                }
            }
            _ => {
                tracing::debug!(mac = %self.mac, %ip, ?state, xid = self.msg.xid(), "NAK: not this client's address");
                let mut reply = self.base(MessageType::Nak);
                reply
                    .opts_mut()
                    .insert(DhcpOption::Message("address not available".into()));
                // RFC 2131 §4.3.2: a NAK goes to the relay, else is broadcast.
                let dest = if self.relayed() {
                    Dest::Unicast(SocketAddrV4::new(
                        self.msg.giaddr(),
                        self.config().server_port,
                    ))
                } else {
                    reply.set_flags(Flags::default().set_broadcast());
                    Dest::Broadcast
                };
                Outcome {
                    reply: Some((reply, dest)),
                    ..Outcome::default()
                }
            }
        }
    }

    fn decline(&self, table: &mut LeaseTable) -> Outcome {
        let ip = match self.msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
            _ => return Outcome::drop(Drop::NoAddress),
        };
        if !table.free_for(ip, self.mac, self.ctx.now) || !self.subnet.network.contains(&ip) {
            return Outcome::drop(Drop::NoAddress);
        }
        let expires = self.ctx.now + u64::from(self.config().decline_quarantine_secs);
        tracing::warn!(mac = %self.mac, %ip, "client declined address (in use?); quarantined");
        table.remove(ip);
        table.set(
            ip,
            Entry {
                mac: None,
                subnet: self.si,
                state: State::Quarantined,
                expires,
            },
        );
        Outcome {
            writes: vec![LeaseWrite {
                ip,
                record: Some(quarantine_record(expires)),
            }],
            ..Outcome::default()
        }
    }

    fn release(&self, table: &mut LeaseTable) -> Outcome {
        let ip = self.msg.ciaddr();
        match table.holder(ip, self.ctx.now) {
            Some(e) if e.mac == Some(self.mac) => {
                table.remove(ip);
                Outcome {
                    writes: vec![LeaseWrite { ip, record: None }],
                    ..Outcome::default()
                }
            }
            _ => Outcome::drop(Drop::NoAddress),
        }
    }

    fn inform(&self) -> Outcome {
        let mut reply = self.base(MessageType::Ack);
        reply.set_ciaddr(self.msg.ciaddr());
        let gateway = self
            .node
            .and_then(|n| reservation(n, self.mac, self.subnet))
            .and_then(|r| r.1);
        self.lease_options(&mut reply, gateway, false);
        let boot = self.boot();
        apply_boot(&mut reply, &boot);
        let dest = if self.relayed() {
            Dest::Unicast(SocketAddrV4::new(
                self.msg.giaddr(),
                self.config().server_port,
            ))
        } else if !self.msg.ciaddr().is_unspecified() {
            Dest::Unicast(SocketAddrV4::new(
                self.msg.ciaddr(),
                self.config().client_port,
            ))
        } else {
            Dest::Unicast(self.src)
        };
        Outcome {
            reply: Some((reply, dest)),
            ..Outcome::default()
        }
    }

    /// ProxyDHCP on the server port: only PXE/HTTP/iPXE DISCOVERs get an offer (no address).
    fn proxy(&self, mtype: MessageType) -> Outcome {
        if mtype != MessageType::Discover {
            return Outcome::drop(Drop::NotServed);
        }
        if pxe::classify(self.msg.opts()) == ClientKind::Plain {
            return Outcome::drop(Drop::NotServed);
        }
        let boot = self.boot();
        if boot.reply.file.is_none() {
            return Outcome {
                boot: Some((self.mac, boot)),
                ..Outcome::drop(Drop::NoBootFile)
            };
        }
        let mut reply = self.base(MessageType::Offer);
        apply_boot(&mut reply, &boot);
        // A proxy offer must say PXEClient or the ROM ignores it (PXE 2.1 §2.2.1).
        if boot.reply.vendor_class.is_none() {
            reply
                .opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        }
        Outcome {
            reply: Some((reply, self.dest_for_lease())),
            boot: Some((self.mac, boot)),
            ..Outcome::default()
        }
    }

    /// A PXE boot-server REQUEST on port 4011: ACK with the boot file, to the sender.
    fn pxe_port_request(&self, mtype: MessageType) -> Outcome {
        if mtype != MessageType::Request && mtype != MessageType::Inform {
            return Outcome::drop(Drop::NotServed);
        }
        let boot = self.boot();
        if boot.reply.file.is_none() {
            return Outcome {
                boot: Some((self.mac, boot)),
                ..Outcome::drop(Drop::NoBootFile)
            };
        }
        let mut reply = self.base(MessageType::Ack);
        reply.set_ciaddr(self.msg.ciaddr());
        apply_boot(&mut reply, &boot);
        if boot.reply.vendor_class.is_none() {
            reply
                .opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        }
        Outcome {
            reply: Some((reply, Dest::Unicast(self.src))),
            boot: Some((self.mac, boot)),
            ..Outcome::default()
        }
    }

    /// RFC 2131 §4.1: relay → giaddr:67; ciaddr set → ciaddr:68; else broadcast.
    fn dest_for_lease(&self) -> Dest {
        if self.relayed() {
            Dest::Unicast(SocketAddrV4::new(
                self.msg.giaddr(),
                self.config().server_port,
            ))
        } else if !self.msg.ciaddr().is_unspecified() {
            Dest::Unicast(SocketAddrV4::new(
                self.msg.ciaddr(),
                self.config().client_port,
            ))
        } else {
            Dest::Broadcast
        }
    }

    /// A reply skeleton: BOOTREPLY with the request's xid, flags, giaddr, chaddr, option 54,
    /// and option 82 echoed (RFC 3046 §2.2).
    fn base(&self, mtype: MessageType) -> Message {
        let mut m = Message::new_with_id(
            self.msg.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.msg.giaddr(),
            &self.mac.0,
        );
        m.set_opcode(Opcode::BootReply);
        m.set_htype(self.msg.htype());
        m.set_flags(self.msg.flags());
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(mtype));
        opts.insert(DhcpOption::ServerIdentifier(self.subnet.server_ip));
        if let Some(o @ DhcpOption::RelayAgentInformation(_)) =
            self.msg.opts().get(OptionCode::RelayAgentInformation)
        {
            if self.relayed() {
                opts.insert(o.clone());
            }
        }
        m
    }

    /// Subnet options (1, 3, 6, 12, 15, 26) and, for a lease, 51/58/59.
    fn lease_options(&self, m: &mut Message, gateway: Option<Ipv4Addr>, lease: bool) {
        let s = self.subnet;
        let opts = m.opts_mut();
        opts.insert(DhcpOption::SubnetMask(s.network.netmask()));
        if let Some(r) = gateway.or(s.router) {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !s.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(s.dns.clone()));
        }
        if let Some(d) = &s.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(mtu) = s.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if let Some(n) = self.node {
            opts.insert(DhcpOption::Hostname(n.serial.to_string()));
        }
        if lease {
            let l = self.config().lease_secs;
            opts.insert(DhcpOption::AddressLeaseTime(l));
            opts.insert(DhcpOption::Renewal(l / 2));
            opts.insert(DhcpOption::Rebinding(l / 8 * 7));
        }
    }
}

/// Puts a boot decision into a reply: file field + option 67, siaddr + option 66, option 60,
/// option 175.176.
pub fn apply_boot(m: &mut Message, boot: &BootDecision) {
    let b = &boot.reply;
    if let Some(ns) = b.next_server {
        m.set_siaddr(ns);
        m.opts_mut()
            .insert(DhcpOption::TFTPServerName(ns.to_string().into_bytes()));
    }
    if let Some(f) = &b.file {
        // The BOOTP file field holds 128 bytes; longer names travel in option 67 only.
        if f.len() < 128 {
            m.set_fname_str(f);
        }
        m.opts_mut()
            .insert(DhcpOption::BootfileName(f.clone().into_bytes()));
    }
    if let Some(vc) = b.vendor_class {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
    if b.no_pxedhcp {
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(OPT_IPXE_ENCAP),
            vec![IPXE_NO_PXEDHCP, 1, 1],
        )));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::boot::dhcp::config::Pool;
    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
    use dhcproto::v4::Architecture;
    use protocol::domain::{BootTarget, ExpectedNic, StaticIp};

    const SRV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
    const KNOWN: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
    const POOLED: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);
    const STRANGER: Mac = Mac([0x52, 0x54, 0, 0, 0, 9]);
    const NOW: u64 = 1_000_000;

    fn subnet(interface: Option<&str>, net: &str, discovery: bool, mode: Mode) -> SubnetConfig {
        let network: ipnet::Ipv4Net = net.parse().unwrap();
        let base = u32::from(network.network());
        SubnetConfig {
            network,
            interface: interface.map(str::to_owned),
            server_ip: Ipv4Addr::from(base + 1),
            router: Some(Ipv4Addr::from(base + 1)),
            dns: vec![Ipv4Addr::from(base + 1)],
            domain: Some("rack1.example".into()),
            mtu: Some(1500),
            pools: if mode == Mode::Proxy {
                vec![]
            } else {
                vec![Pool {
                    start: Ipv4Addr::from(base + 100),
                    end: Ipv4Addr::from(base + 101),
                }]
            },
            discovery,
            mode,
            router_advertisements: false,
        }
    }

    fn config(subnets: Vec<SubnetConfig>) -> DhcpConfig {
        DhcpConfig {
            lease_secs: 3600,
            offer_hold_secs: 30,
            decline_quarantine_secs: 600,
            lease_file: "/nonexistent".into(),
            server_port: 67,
            client_port: 68,
            pxe_port: 4011,
            subnets,
        }
    }

    fn node(mac: Mac, ips: &[(&str, &str)], target: BootTarget) -> RackNode {
        RackNode {
            id: "6f1c1d9e-0000-4000-8000-000000000001".parse().unwrap(),
            serial: "SN-1".parse().unwrap(),
            macs: vec![mac],
            boot_target: target,
            static_ips: ips
                .iter()
                .map(|(ifc, ip)| StaticIp {
                    interface: (*ifc).into(),
                    address: ip.parse().unwrap(),
                    prefix: 24,
                    gateway: Some("10.10.0.254".parse().unwrap()),
                })
                .collect(),
            switch_ports: vec![ExpectedNic {
                name: "eno1".into(),
                mac: Some(mac),
                switch: None,
                port: None,
            }],
            bmc: None,
            revision: 1,
            power: None,
        }
    }

    fn msg(mac: Mac, t: MessageType) -> Message {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(t));
        m
    }

    fn src() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
    }

    struct T {
        config: DhcpConfig,
        table: LeaseTable,
    }

    impl T {
        fn new(subnets: Vec<SubnetConfig>) -> T {
            let config = config(subnets);
            let (table, _) = LeaseTable::load(&config.subnets, vec![]);
            T { config, table }
        }
        fn run(
            &mut self,
            m: &Message,
            arrival: Arrival,
            node: Option<&RackNode>,
            now: u64,
        ) -> Outcome {
            let ctx = Ctx {
                config: &self.config,
                http_port: Some(8080),
                now,
            };
            handle(&ctx, &mut self.table, m, arrival, src(), node)
        }
    }

    fn opt(m: &Message, c: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(c)
    }

    #[test]
    fn reservation_prefers_the_nic_then_the_only_address() {
        let s = subnet(None, "10.10.0.0/24", false, Mode::Authoritative);
        let n = node(
            KNOWN,
            &[
                ("bmc", "10.10.0.5"),
                ("eno2", "10.10.0.6"),
                ("eno1", "10.10.0.7"),
            ],
            BootTarget::Local,
        );
        assert_eq!(
            reservation(&n, KNOWN, &s).unwrap().0,
            Ipv4Addr::new(10, 10, 0, 7)
        );
        let n = node(
            KNOWN,
            &[("bmc", "10.10.0.5"), ("eth9", "10.10.0.6")],
            BootTarget::Local,
        );
        assert_eq!(
            reservation(&n, KNOWN, &s).unwrap().0,
            Ipv4Addr::new(10, 10, 0, 6)
        );
        let n = node(
            KNOWN,
            &[("eth8", "10.10.0.8"), ("eth9", "10.10.0.6")],
            BootTarget::Local,
        );
        assert_eq!(reservation(&n, KNOWN, &s), None);
        let n = node(KNOWN, &[("eno1", "10.20.0.7")], BootTarget::Local);
        assert_eq!(reservation(&n, KNOWN, &s), None);
    }

    #[test]
    fn reserved_client_discover_request_ack_with_options_and_boot() {
        let mut t = T::new(vec![subnet(
            Some("br0"),
            "10.10.0.0/24",
            false,
            Mode::Authoritative,
        )]);
        let n = node(KNOWN, &[("eno1", "10.10.0.7")], BootTarget::Discovery);
        let mut d = msg(KNOWN, MessageType::Discover);
        d.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000".to_vec(),
        ));
        d.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
        let o = t.run(&d, Arrival::Interface(0), Some(&n), NOW);
        let (offer, dest) = o.reply.unwrap();
        assert_eq!(dest, Dest::Broadcast);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 10, 0, 7));
        assert_eq!(offer.siaddr(), SRV);
        assert_eq!(offer.fname_str().unwrap().unwrap(), "undionly.kpxe");
        assert_eq!(
            opt(&offer, OptionCode::Router),
            Some(&DhcpOption::Router(vec!["10.10.0.254".parse().unwrap()]))
        );
        assert_eq!(
            opt(&offer, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("SN-1".into()))
        );
        assert!(offer.opts().contains(OptionCode::Unknown(175)));
        assert!(o.writes.is_empty());
        let mut r = msg(KNOWN, MessageType::Request);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 10, 0, 7)));
        let o = t.run(&r, Arrival::Interface(0), Some(&n), NOW + 1);
        let (ack, _) = o.reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(o.writes.len(), 1);
        assert_eq!(o.lease_event, Some((KNOWN, Ipv4Addr::new(10, 10, 0, 7))));
        // A renewal of the same binding is not a new lease event.
        let mut renew = msg(KNOWN, MessageType::Request);
        renew.set_ciaddr(Ipv4Addr::new(10, 10, 0, 7));
        let o = t.run(&renew, Arrival::Interface(0), Some(&n), NOW + 100);
        let (ack, dest) = o.reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            dest,
            Dest::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, 7), 68))
        );
        assert_eq!(o.lease_event, None);
    }

    #[test]
    fn unknown_clients_only_on_discovery_subnets() {
        let mut t = T::new(vec![
            subnet(Some("a"), "10.10.0.0/24", false, Mode::Authoritative),
            subnet(Some("b"), "10.20.0.0/24", true, Mode::Authoritative),
        ]);
        let mut d = msg(STRANGER, MessageType::Discover);
        d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        assert_eq!(
            t.run(&d, Arrival::Interface(0), None, NOW).dropped,
            Some(Drop::UnknownClient)
        );
        let o = t.run(&d, Arrival::Interface(1), None, NOW);
        let (offer, _) = o.reply.unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 20, 0, 100));
        assert!(o.boot.unwrap().1.detail.starts_with("discovery"));
    }

    #[test]
    fn pool_offers_are_held_and_exhaust() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            true,
            Mode::Authoritative,
        )]);
        let a = t
            .run(
                &msg(POOLED, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        // The same client is offered the same address again.
        let again = t
            .run(
                &msg(POOLED, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        assert_eq!(a, again);
        let b = t
            .run(
                &msg(STRANGER, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        assert_ne!(a, b);
        let third = Mac([2, 0, 0, 0, 0, 3]);
        assert_eq!(
            t.run(
                &msg(third, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW
            )
            .dropped,
            Some(Drop::PoolExhausted)
        );
        // After the hold lapses the address is offered to someone else.
        let o = t.run(
            &msg(third, MessageType::Discover),
            Arrival::Interface(0),
            None,
            NOW + 31,
        );
        assert!(o.reply.is_some());
    }

    #[test]
    fn requests_for_someone_elses_address_are_naked() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            true,
            Mode::Authoritative,
        )]);
        let n = node(KNOWN, &[("eno1", "10.10.0.7")], BootTarget::Local);
        let mut r = msg(KNOWN, MessageType::Request);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                10, 10, 0, 100,
            )));
        let o = t.run(&r, Arrival::Interface(0), Some(&n), NOW);
        let (nak, dest) = o.reply.unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(dest, Dest::Broadcast);
        assert!(o.writes.is_empty());
        // init-reboot of a free pool address by a pool client is adopted...
        let mut r = msg(POOLED, MessageType::Request);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                10, 10, 0, 100,
            )));
        let o = t.run(&r, Arrival::Interface(0), None, NOW);
        assert_eq!(o.reply.unwrap().0.opts().msg_type(), Some(MessageType::Ack));
        // ...and then never given to another client.
        let mut r = msg(STRANGER, MessageType::Request);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                10, 10, 0, 100,
            )));
        let o = t.run(&r, Arrival::Interface(0), None, NOW);
        assert_eq!(o.reply.unwrap().0.opts().msg_type(), Some(MessageType::Nak));
        let o = t.run(
            &msg(STRANGER, MessageType::Discover),
            Arrival::Interface(0),
            None,
            NOW,
        );
        assert_eq!(o.reply.unwrap().0.yiaddr(), Ipv4Addr::new(10, 10, 0, 101));
        // Outside the subnet: NAK.
        let mut r = msg(POOLED, MessageType::Request);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 1, 5,
            )));
        let o = t.run(&r, Arrival::Interface(0), None, NOW);
        assert_eq!(o.reply.unwrap().0.opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn selecting_another_server_releases_the_hold() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            true,
            Mode::Authoritative,
        )]);
        let ip = t
            .run(
                &msg(POOLED, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        let mut r = msg(POOLED, MessageType::Request);
        r.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 10, 0, 2)));
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        assert_eq!(
            t.run(&r, Arrival::Interface(0), None, NOW).dropped,
            Some(Drop::OtherServer)
        );
        assert!(t.table.holder(ip, NOW).is_none());
    }

    #[test]
    fn relayed_requests_pick_the_giaddr_subnet_and_echo_option_82() {
        let mut t = T::new(vec![
            subnet(Some("a"), "10.10.0.0/24", false, Mode::Authoritative),
            subnet(None, "10.30.0.0/24", false, Mode::Authoritative),
        ]);
        let n = node(KNOWN, &[("eno1", "10.30.0.7")], BootTarget::Local);
        let mut d = msg(KNOWN, MessageType::Discover);
        d.set_giaddr(Ipv4Addr::new(10, 30, 0, 254));
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"port7".to_vec()));
        d.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info.clone()));
        // Even when it arrives on the interface socket, giaddr decides.
        let o = t.run(&d, Arrival::Interface(0), Some(&n), NOW);
        let (offer, dest) = o.reply.unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 30, 0, 7));
        assert_eq!(
            dest,
            Dest::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 30, 0, 254), 67))
        );
        assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 30, 0, 254));
        assert_eq!(
            opt(&offer, OptionCode::RelayAgentInformation),
            Some(&DhcpOption::RelayAgentInformation(info))
        );
        assert_eq!(
            opt(&offer, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 30, 0, 1)))
        );
        // Unbound socket without giaddr or ciaddr: no subnet.
        let d = msg(KNOWN, MessageType::Discover);
        assert_eq!(
            t.run(&d, Arrival::Unbound, Some(&n), NOW).dropped,
            Some(Drop::NoSubnet)
        );
        // A relay whose giaddr is in no subnet: no subnet.
        let mut d = msg(KNOWN, MessageType::Discover);
        d.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(
            t.run(&d, Arrival::Unbound, Some(&n), NOW).dropped,
            Some(Drop::NoSubnet)
        );
    }

    #[test]
    fn decline_quarantines_and_release_frees() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            true,
            Mode::Authoritative,
        )]);
        let ip = t
            .run(
                &msg(POOLED, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        let mut dec = msg(POOLED, MessageType::Decline);
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let o = t.run(&dec, Arrival::Interface(0), None, NOW);
        assert!(o.reply.is_none());
        assert_eq!(o.writes.len(), 1);
        assert_eq!(t.table.holder(ip, NOW).unwrap().state, State::Quarantined);
        let next = t
            .run(
                &msg(POOLED, MessageType::Discover),
                Arrival::Interface(0),
                None,
                NOW,
            )
            .reply
            .unwrap()
            .0
            .yiaddr();
        assert_ne!(next, ip);
        let mut r = msg(POOLED, MessageType::Request);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(next));
        assert!(t.run(&r, Arrival::Interface(0), None, NOW).reply.is_some());
        let mut rel = msg(POOLED, MessageType::Release);
        rel.set_ciaddr(next);
        let o = t.run(&rel, Arrival::Interface(0), None, NOW);
        assert_eq!(
            o.writes,
            vec![LeaseWrite {
                ip: next,
                record: None
            }]
        );
        assert!(t.table.holder(next, NOW).is_none());
    }

    #[test]
    fn inform_gets_options_without_a_lease() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            true,
            Mode::Authoritative,
        )]);
        let mut inf = msg(POOLED, MessageType::Inform);
        inf.set_ciaddr(Ipv4Addr::new(10, 10, 0, 50));
        let o = t.run(&inf, Arrival::Interface(0), None, NOW);
        let (ack, dest) = o.reply.unwrap();
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(!ack.opts().contains(OptionCode::AddressLeaseTime));
        assert!(ack.opts().contains(OptionCode::DomainNameServer));
        assert_eq!(
            dest,
            Dest::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, 50), 68))
        );
        assert!(o.writes.is_empty());
    }

    #[test]
    fn proxy_mode_offers_boot_only_and_acks_on_4011() {
        let mut t = T::new(vec![subnet(Some("a"), "10.10.0.0/24", true, Mode::Proxy)]);
        let n = node(KNOWN, &[], BootTarget::Discovery);
        let plain = msg(KNOWN, MessageType::Discover);
        assert_eq!(
            t.run(&plain, Arrival::Interface(0), Some(&n), NOW).dropped,
            Some(Drop::NotServed)
        );
        let mut d = msg(KNOWN, MessageType::Discover);
        d.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007".to_vec(),
        ));
        d.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture(7)));
        let o = t.run(&d, Arrival::Interface(0), Some(&n), NOW);
        let (offer, _) = o.reply.unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            opt(&offer, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            opt(&offer, OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"ipxe.efi".to_vec()))
        );
        assert!(!offer.opts().contains(OptionCode::AddressLeaseTime));
        let mut r = d.clone();
        r.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        r.set_ciaddr(Ipv4Addr::new(10, 10, 0, 77));
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, 77), 68);
        let ctx = Ctx {
            config: &t.config,
            http_port: Some(8080),
            now: NOW,
        };
        let o = handle(
            &ctx,
            &mut t.table,
            &r,
            Arrival::Pxe(Some(0)),
            from,
            Some(&n),
        );
        let (ack, dest) = o.reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, Dest::Unicast(from));
        assert_eq!(ack.fname_str().unwrap().unwrap(), "ipxe.efi");
        assert!(t.table.by_client(0, KNOWN).is_none());
    }

    #[test]
    fn boot_target_none_gets_an_address_but_no_file() {
        let mut t = T::new(vec![subnet(
            Some("a"),
            "10.10.0.0/24",
            false,
            Mode::Authoritative,
        )]);
        let n = node(KNOWN, &[("eno1", "10.10.0.7")], BootTarget::None);
        let mut d = msg(KNOWN, MessageType::Discover);
        d.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000".to_vec(),
        ));
        let (offer, _) = t
            .run(&d, Arrival::Interface(0), Some(&n), NOW)
            .reply
            .unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 10, 0, 7));
        assert!(!offer.opts().contains(OptionCode::BootfileName));
        assert_eq!(offer.fname(), None);
    }
}
