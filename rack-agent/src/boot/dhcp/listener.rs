//! DHCP sockets and the receive loop: bind per interface (SO_BINDTODEVICE) plus one unbound
//! socket for relayed traffic, screen raw packets, hand each to the handler, and send or
//! queue its reply. No policy here.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder, Encodable};
use protocol::fleet::EventKind;
use socket2::{Domain, Protocol, Socket, Type};

use super::handler::{self, Arrival, Ctx, Dest};
use super::leases::{Outgoing, WriteJob};
use super::stats::{Drop, MsgKind};
use super::{unix_now, Shared};

/// Receive buffer asked of the kernel, so a burst of DISCOVERs is queued, not lost.
const RECV_BUFFER: usize = 4 << 20;
/// Largest datagram read (DHCP messages are at most 576 bytes unless option 57 says more).
const MAX_PACKET: usize = 4096;
/// BOOTP header plus magic cookie: where options start (RFC 2131 §3).
const OPTIONS_START: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// How long a blocking receive waits before checking for shutdown.
const RECV_POLL: Duration = Duration::from_millis(200);

/// One bound DHCP socket, served by its own thread with blocking receives (fewer wake-ups
/// and thread hops per packet than an async task; the DHCP path never awaits anything).
#[derive(Debug)]
pub struct Listener {
    /// The socket (blocking, with a receive timeout); also used for sending, including from
    /// the lease writer thread.
    pub socket: Arc<UdpSocket>,
    /// What arriving on it means for subnet selection.
    pub arrival: Arrival,
    /// Where it is bound (for logs).
    pub label: String,
}

/// Binds a UDP socket on 0.0.0.0:`port`, bound to `device` if given, broadcast-capable.
pub fn bind_udp(port: u16, device: Option<&str>) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))?;
    }
    // Best effort: capped by net.core.rmem_max.
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    s.set_read_timeout(Some(RECV_POLL))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

impl Listener {
    /// Wraps a bound socket.
    pub fn new(socket: UdpSocket, arrival: Arrival, label: String) -> Listener {
        Listener {
            socket: Arc::new(socket),
            arrival,
            label,
        }
    }
}

/// Screens a raw datagram before decoding, so the decoder only sees well-framed BOOTREQUESTs
/// from Ethernet clients (the decoder indexes chaddr by hlen and asserts some option lengths).
pub fn screen(buf: &[u8]) -> Result<(), Drop> {
    if buf.len() < OPTIONS_START {
        return Err(Drop::Decode);
    }
    if buf.first() != Some(&1) {
        return Err(Drop::NotBootRequest);
    }
    if buf.get(1) != Some(&1) || buf.get(2) != Some(&6) {
        return Err(Drop::BadHardwareAddress);
    }
    if buf.get(236..OPTIONS_START) != Some(&MAGIC[..]) {
        return Err(Drop::Decode);
    }
    let mut i = OPTIONS_START;
    while let Some(&code) = buf.get(i) {
        match code {
            0 => i += 1,
            255 => return Ok(()),
            _ => {
                let len = usize::from(*buf.get(i + 1).ok_or(Drop::Decode)?);
                if i + 2 + len > buf.len() {
                    return Err(Drop::Decode);
                }
                // Option 94 (client NDI) must be 3 bytes (RFC 4578 §2.2).
                if code == 94 && len != 3 {
                    return Err(Drop::Decode);
                }
                i += 2 + len;
            }
        }
    }
    Ok(())
}

/// Receives on `l` until `stop` is set (checked at least every [`RECV_POLL`]).
pub fn serve(shared: Arc<Shared>, l: Arc<Listener>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match l.socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(socket = %l.label, error = %e, "dhcp recv error");
                continue;
            }
        };
        let SocketAddr::V4(src) = src else { continue };
        if let Some(pkt) = buf.get(..n) {
            process(&shared, &l, pkt, src);
        }
    }
}

/// Handles one datagram: screen, decode, decide, reply or queue. Never fails.
pub fn process(shared: &Shared, l: &Listener, pkt: &[u8], src: SocketAddrV4) {
    let stats = &shared.stats;
    if let Err(why) = screen(pkt) {
        stats.dropped(why);
        tracing::debug!(peer = %src, socket = %l.label, reason = why.name(), len = pkt.len(), "dhcp packet dropped");
        return;
    }
    let msg = match Message::decode(&mut Decoder::new(pkt)) {
        Ok(m) => m,
        Err(e) => {
            stats.dropped(Drop::Decode);
            tracing::debug!(peer = %src, error = %e, "undecodable dhcp packet");
            return;
        }
    };
    let kind = msg.opts().msg_type().map(MsgKind::from);
    stats.received(kind.unwrap_or(MsgKind::Other));
    let node = handler::client_mac(&msg).and_then(|m| shared.backend.node_by_mac(&m));
    let now = unix_now();
    let ctx = Ctx {
        config: &shared.config,
        http_port: shared.http_port,
        now,
    };
    let outcome = {
        let mut table = shared.table.lock().unwrap_or_else(PoisonError::into_inner);
        handler::handle(&ctx, &mut table, &msg, l.arrival, src, node.as_ref())
    };
    let mac = handler::client_mac(&msg);
    if let Some(why) = outcome.dropped {
        stats.dropped(why);
        tracing::debug!(peer = %src, mac = ?mac, xid = msg.xid(), reason = why.name(), "dhcp request not answered");
    }
    if let Some((mac, boot)) = outcome.boot {
        if boot.unsupported_arch {
            stats.unsupported_arch();
            tracing::info!(%mac, detail = %boot.detail, "no boot file for this client architecture");
        }
        shared
            .events
            .boot(mac, node.as_ref().map(|n| n.id), boot.detail, stats);
    }
    let reply = match outcome.reply {
        Some((m, dest)) => {
            let mut bytes = Vec::with_capacity(400);
            if let Err(e) = m.encode(&mut dhcproto::Encoder::new(&mut bytes)) {
                tracing::warn!(mac = ?mac, error = %e, "could not encode dhcp reply");
                return;
            }
            let dest = match dest {
                Dest::Broadcast => {
                    SocketAddr::from((Ipv4Addr::BROADCAST, shared.config.client_port))
                }
                Dest::Unicast(a) => SocketAddr::V4(a),
            };
            let kind = m
                .opts()
                .msg_type()
                .map(MsgKind::from)
                .unwrap_or(MsgKind::Other);
            Some(Outgoing {
                socket: l.socket.clone(),
                bytes,
                dest,
                kind,
            })
        }
        None => None,
    };
    if outcome.writes.is_empty() {
        if let Some(r) = reply {
            r.send(stats);
        }
        return;
    }
    let events = outcome
        .lease_event
        .map(|(mac, ip)| vec![EventKind::Lease { mac, ip: ip.into() }])
        .unwrap_or_default();
    let job = WriteJob {
        writes: outcome.writes,
        reply,
        events,
    };
    if !shared.writer.submit(job) {
        stats.dropped(Drop::Overloaded);
        tracing::warn!(mac = ?mac, "lease writer queue full; reply withheld");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> Vec<u8> {
        let mut p = vec![0u8; 300];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[236..240].copy_from_slice(&MAGIC);
        p[240] = 53;
        p[241] = 1;
        p[242] = 1;
        p[243] = 255;
        p
    }

    #[test]
    fn screen_rejects_hostile_framing() {
        assert_eq!(screen(&packet()), Ok(()));
        assert_eq!(screen(&[1, 2, 3]), Err(Drop::Decode));
        let mut p = packet();
        p[0] = 2;
        assert_eq!(screen(&p), Err(Drop::NotBootRequest));
        let mut p = packet();
        p[2] = 200;
        assert_eq!(screen(&p), Err(Drop::BadHardwareAddress));
        let mut p = packet();
        p[241] = 250; // option length past the end
        p.truncate(260);
        assert_eq!(screen(&p), Err(Drop::Decode));
        let mut p = packet();
        p[240] = 94;
        p[241] = 1;
        assert_eq!(screen(&p), Err(Drop::Decode));
        let mut p = packet();
        p[237] = 0;
        assert_eq!(screen(&p), Err(Drop::Decode));
    }
}
