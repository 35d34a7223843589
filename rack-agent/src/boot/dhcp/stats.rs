//! The DHCP server's counters and their Prometheus rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dhcproto::v4::MessageType;

use crate::boot::Metrics;

/// DHCP message types as counted (RFC 2132 §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPOFFER.
    Offer,
    /// DHCPREQUEST.
    Request,
    /// DHCPDECLINE.
    Decline,
    /// DHCPACK.
    Ack,
    /// DHCPNAK.
    Nak,
    /// DHCPRELEASE.
    Release,
    /// DHCPINFORM.
    Inform,
    /// Anything else.
    Other,
}

impl MsgKind {
    const ALL: [MsgKind; 9] = [
        MsgKind::Discover,
        MsgKind::Offer,
        MsgKind::Request,
        MsgKind::Decline,
        MsgKind::Ack,
        MsgKind::Nak,
        MsgKind::Release,
        MsgKind::Inform,
        MsgKind::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            MsgKind::Discover => "discover",
            MsgKind::Offer => "offer",
            MsgKind::Request => "request",
            MsgKind::Decline => "decline",
            MsgKind::Ack => "ack",
            MsgKind::Nak => "nak",
            MsgKind::Release => "release",
            MsgKind::Inform => "inform",
            MsgKind::Other => "other",
        }
    }
}

impl From<MessageType> for MsgKind {
    fn from(t: MessageType) -> MsgKind {
        match t {
            MessageType::Discover => MsgKind::Discover,
            MessageType::Offer => MsgKind::Offer,
            MessageType::Request => MsgKind::Request,
            MessageType::Decline => MsgKind::Decline,
            MessageType::Ack => MsgKind::Ack,
            MessageType::Nak => MsgKind::Nak,
            MessageType::Release => MsgKind::Release,
            MessageType::Inform => MsgKind::Inform,
            _ => MsgKind::Other,
        }
    }
}

/// Why a received packet got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than a BOOTP header, bad magic cookie, or options overrunning the packet.
    Decode,
    /// `op` is not BOOTREQUEST.
    NotBootRequest,
    /// Not Ethernet with a 6-byte hardware address.
    BadHardwareAddress,
    /// No option 53.
    NoMessageType,
    /// No served subnet matches (giaddr, interface, ciaddr).
    NoSubnet,
    /// Unknown MAC on a subnet without `discovery`.
    UnknownClient,
    /// A REQUEST selecting another server's offer.
    OtherServer,
    /// The client's reservation is held by another client's pool lease.
    ReservationConflict,
    /// No free pool address.
    PoolExhausted,
    /// A REQUEST/DECLINE without the address it is about.
    NoAddress,
    /// A message the subnet's mode does not answer (e.g. a non-PXE client on a proxy subnet).
    NotServed,
    /// A proxy client we have no boot file for.
    NoBootFile,
    /// The lease writer's queue was full.
    Overloaded,
}

impl Drop {
    const ALL: [Drop; 13] = [
        Drop::Decode,
        Drop::NotBootRequest,
        Drop::BadHardwareAddress,
        Drop::NoMessageType,
        Drop::NoSubnet,
        Drop::UnknownClient,
        Drop::OtherServer,
        Drop::ReservationConflict,
        Drop::PoolExhausted,
        Drop::NoAddress,
        Drop::NotServed,
        Drop::NoBootFile,
        Drop::Overloaded,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Drop::Decode => "decode_error",
            Drop::NotBootRequest => "not_bootrequest",
            Drop::BadHardwareAddress => "bad_hardware_address",
            Drop::NoMessageType => "no_message_type",
            Drop::NoSubnet => "no_subnet",
            Drop::UnknownClient => "unknown_client_ignored",
            Drop::OtherServer => "other_server_selected",
            Drop::ReservationConflict => "reservation_conflict",
            Drop::PoolExhausted => "pool_exhausted",
            Drop::NoAddress => "no_address",
            Drop::NotServed => "not_served",
            Drop::NoBootFile => "no_boot_file",
            Drop::Overloaded => "overloaded",
        }
    }
}

/// Counters of one DHCP server.
#[derive(Debug, Default)]
pub struct Stats {
    received: [AtomicU64; 9],
    sent: [AtomicU64; 9],
    dropped: [AtomicU64; 13],
    send_errors: AtomicU64,
    leases_active: AtomicU64,
    commits: AtomicU64,
    committed_jobs: AtomicU64,
    commit_failures: AtomicU64,
    unsupported_arch: AtomicU64,
    ra_sent: AtomicU64,
    events_deduplicated: AtomicU64,
}

fn idx<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(0)
}

impl Stats {
    /// A packet of `kind` arrived.
    pub fn received(&self, kind: MsgKind) {
        if let Some(c) = self.received.get(idx(&MsgKind::ALL, &kind)) {
            c.fetch_add(1, Relaxed);
        }
    }
    /// A reply of `kind` was sent.
    pub fn sent(&self, kind: MsgKind) {
        if let Some(c) = self.sent.get(idx(&MsgKind::ALL, &kind)) {
            c.fetch_add(1, Relaxed);
        }
    }
    /// A packet was dropped for `why`.
    pub fn dropped(&self, why: Drop) {
        if let Some(c) = self.dropped.get(idx(&Drop::ALL, &why)) {
            c.fetch_add(1, Relaxed);
        }
    }
    /// How many packets were dropped for `why`.
    pub fn dropped_count(&self, why: Drop) -> u64 {
        self.dropped
            .get(idx(&Drop::ALL, &why))
            .map(|c| c.load(Relaxed))
            .unwrap_or(0)
    }
    /// Sending a reply failed.
    pub fn send_error(&self) {
        self.send_errors.fetch_add(1, Relaxed);
    }
    /// Sets the active-lease gauge.
    pub fn set_leases_active(&self, n: u64) {
        self.leases_active.store(n, Relaxed);
    }
    /// A batch of `jobs` lease writes was committed.
    pub fn committed(&self, jobs: usize) {
        self.commits.fetch_add(1, Relaxed);
        self.committed_jobs.fetch_add(jobs as u64, Relaxed);
    }
    /// A lease commit failed.
    pub fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }
    /// A PXE/HTTP client had an architecture we have no boot file for.
    pub fn unsupported_arch(&self) {
        self.unsupported_arch.fetch_add(1, Relaxed);
    }
    /// A router advertisement was sent.
    pub fn ra_sent(&self) {
        self.ra_sent.fetch_add(1, Relaxed);
    }
    /// A boot event was suppressed as a repeat.
    pub fn event_deduplicated(&self) {
        self.events_deduplicated.fetch_add(1, Relaxed);
    }
}

impl Metrics for Stats {
    fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP metalfleet_dhcp_received_total DHCP packets received, by message type."
        );
        let _ = writeln!(out, "# TYPE metalfleet_dhcp_received_total counter");
        for (k, c) in MsgKind::ALL.iter().zip(&self.received) {
            let _ = writeln!(
                out,
                "metalfleet_dhcp_received_total{{type=\"{}\"}} {}",
                k.name(),
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP metalfleet_dhcp_sent_total DHCP replies sent, by message type."
        );
        let _ = writeln!(out, "# TYPE metalfleet_dhcp_sent_total counter");
        for (k, c) in MsgKind::ALL.iter().zip(&self.sent) {
            let _ = writeln!(
                out,
                "metalfleet_dhcp_sent_total{{type=\"{}\"}} {}",
                k.name(),
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP metalfleet_dhcp_dropped_total DHCP packets dropped without a reply, by reason."
        );
        let _ = writeln!(out, "# TYPE metalfleet_dhcp_dropped_total counter");
        for (d, c) in Drop::ALL.iter().zip(&self.dropped) {
            let _ = writeln!(
                out,
                "metalfleet_dhcp_dropped_total{{reason=\"{}\"}} {}",
                d.name(),
                c.load(Relaxed)
            );
        }
        let scalars: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "metalfleet_dhcp_naks_total",
                "counter",
                "DHCPNAKs sent.",
                &self.sent[5],
            ),
            (
                "metalfleet_dhcp_pool_exhausted_total",
                "counter",
                "DISCOVERs left unanswered because the pool was full.",
                &self.dropped[8],
            ),
            (
                "metalfleet_dhcp_leases_active",
                "gauge",
                "Unexpired bound leases.",
                &self.leases_active,
            ),
            (
                "metalfleet_dhcp_send_errors_total",
                "counter",
                "Replies the kernel refused to send.",
                &self.send_errors,
            ),
            (
                "metalfleet_dhcp_lease_commits_total",
                "counter",
                "Lease database transactions committed (group commits).",
                &self.commits,
            ),
            (
                "metalfleet_dhcp_lease_commit_failures_total",
                "counter",
                "Lease database commits that failed (replies withheld).",
                &self.commit_failures,
            ),
            (
                "metalfleet_dhcp_unsupported_arch_total",
                "counter",
                "PXE/HTTP boot clients with an architecture we have no iPXE for.",
                &self.unsupported_arch,
            ),
            (
                "metalfleet_dhcp_router_advertisements_total",
                "counter",
                "IPv6 router advertisements sent.",
                &self.ra_sent,
            ),
        ];
        for (name, ty, help, c) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {ty}");
            let _ = writeln!(out, "{name} {}", c.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP metalfleet_dhcp_lease_writes_total Lease writes committed."
        );
        let _ = writeln!(out, "# TYPE metalfleet_dhcp_lease_writes_total counter");
        let _ = writeln!(
            out,
            "metalfleet_dhcp_lease_writes_total {}",
            self.committed_jobs.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP metalfleet_dhcp_boot_events_deduplicated_total Boot events not re-emitted (same MAC and decision within 60 s).");
        let _ = writeln!(
            out,
            "# TYPE metalfleet_dhcp_boot_events_deduplicated_total counter"
        );
        let _ = writeln!(
            out,
            "metalfleet_dhcp_boot_events_deduplicated_total {}",
            self.events_deduplicated.load(Relaxed)
        );
    }
}
