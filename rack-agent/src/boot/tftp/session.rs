//! One read transfer: the RFC 1350/7440 window state machine (socket-free, unit-tested) and
//! the task that drives it over the transfer's own UDP socket (its transfer ID).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::handler::{self, Decision, Limits, Lookup, Source};
use super::packet::{self, ErrorCode, Malformed, Packet, Request, MAX_DATAGRAM};
use super::stats::{Outcome, TftpStats};

/// Bytes read from disk at a time for files too large for the cache (per transfer, so
/// `max_transfers` of them bound the memory of streamed transfers: 256 MiB at the default).
const CHUNK_BYTES: usize = 256 << 10;

/// What an ACK did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// A duplicate, old or out-of-window ACK: ignored (no retransmission, so no Sorcerer's
    /// Apprentice storm).
    Ignored,
    /// The window moved: send from [`Window::base`].
    Advanced,
    /// The last block was acknowledged.
    Done,
}

/// Sender state of one transfer. Blocks are numbered from 1 internally without wrapping;
/// the wire carries the number modulo 65536 (block 65536 is sent as 0, like tftp-hpa, atftp
/// and iPXE expect).
#[derive(Debug, Clone)]
pub struct Window {
    blksize: u64,
    windowsize: u64,
    last: u64,
    /// First block not yet acknowledged.
    base: u64,
    /// Blocks below this were sent at least once.
    sent_upto: u64,
    /// Waiting for ACK 0 of our OACK.
    oack_pending: bool,
    /// Timeouts since the last progress.
    retries: u32,
}

impl Window {
    /// A transfer of `len` bytes; `oack` when an OACK is sent first.
    pub fn new(len: u64, blksize: u16, windowsize: u16, oack: bool) -> Window {
        let blksize = u64::from(blksize.max(1));
        Window {
            blksize,
            windowsize: u64::from(windowsize.max(1)),
            // The last block is short, possibly empty: 0..blksize-1 bytes.
            last: len / blksize + 1,
            base: 1,
            sent_upto: 1,
            oack_pending: oack,
            retries: 0,
        }
    }

    /// Whether the OACK still awaits its ACK 0.
    pub fn oack_pending(&self) -> bool {
        self.oack_pending
    }

    /// First unacknowledged block.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Number of the final block.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The blocks to send now (the whole window from the first unacknowledged block).
    pub fn window(&self) -> Range<u64> {
        self.base..(self.base + self.windowsize).min(self.last + 1)
    }

    /// Byte range of `block` in the file.
    pub fn span(&self, block: u64, len: u64) -> Range<u64> {
        let start = (block - 1) * self.blksize;
        start.min(len)..(start + self.blksize).min(len)
    }

    /// The wire number of `block`.
    pub fn wire(block: u64) -> u16 {
        (block & 0xffff) as u16
    }

    /// Records that [`Window::window`] was sent; returns how many of its blocks had been
    /// sent before (retransmissions).
    pub fn sent(&mut self) -> u64 {
        let w = self.window();
        let resent = self.sent_upto.min(w.end).saturating_sub(w.start);
        self.sent_upto = self.sent_upto.max(w.end);
        resent
    }

    /// Applies an ACK carrying wire block number `wire`.
    pub fn on_ack(&mut self, wire: u16) -> AckEffect {
        if self.oack_pending {
            if wire == 0 {
                self.oack_pending = false;
                self.retries = 0;
                return AckEffect::Advanced;
            }
            return AckEffect::Ignored;
        }
        // Only blocks already sent can be acknowledged; the window is at most half the
        // number space, so at most one candidate matches.
        let hi = self.sent_upto.min(self.window().end);
        let Some(k) = (self.base..hi).find(|k| Self::wire(*k) == wire) else {
            return AckEffect::Ignored;
        };
        self.base = k + 1;
        self.retries = 0;
        if k >= self.last {
            AckEffect::Done
        } else {
            // RFC 7440: an ACK inside the window means the blocks after it were lost; the
            // next send starts right after it.
            AckEffect::Advanced
        }
    }

    /// A timeout passed without progress: `true` to retransmit, `false` to give up after
    /// `retries` retransmissions.
    pub fn on_timeout(&mut self, retries: u32) -> bool {
        self.retries += 1;
        self.retries <= retries
    }
}

/// Reads blocks from a [`Source`], in chunks for files not held in memory.
#[derive(Debug)]
pub struct Reader {
    source: Source,
    chunk: Bytes,
    chunk_at: u64,
}

impl Reader {
    /// A reader over `source`.
    pub fn new(source: Source) -> Reader {
        Reader {
            source,
            chunk: Bytes::new(),
            chunk_at: 0,
        }
    }

    /// Total length.
    pub fn len(&self) -> u64 {
        self.source.len()
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// The bytes of `span`.
    pub async fn read(&mut self, span: Range<u64>) -> io::Result<Bytes> {
        let (file, len) = match &self.source {
            Source::Memory(b) => {
                let s = usize::try_from(span.start)
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                let e = usize::try_from(span.end).unwrap_or(usize::MAX).min(b.len());
                return Ok(b.slice(s..e.max(s)));
            }
            Source::File { file, len } => (file.clone(), *len),
        };
        let want = usize::try_from(span.end - span.start).unwrap_or(0);
        let chunk_end = self.chunk_at + self.chunk.len() as u64;
        if span.start < self.chunk_at || span.end > chunk_end {
            let at = span.start;
            let size = usize::try_from(len.saturating_sub(at))
                .unwrap_or(usize::MAX)
                .min(CHUNK_BYTES.max(want));
            let buf = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                let mut buf = vec![0u8; size];
                let mut filled = 0;
                while filled < size {
                    let rest = buf.get_mut(filled..).unwrap_or_default();
                    let n = file.read_at(rest, at + filled as u64)?;
                    if n == 0 {
                        return Err(io::Error::other("file shrank during the transfer"));
                    }
                    filled += n;
                }
                Ok(buf)
            })
            .await
            .map_err(io::Error::other)??;
            self.chunk = Bytes::from(buf);
            self.chunk_at = at;
        }
        let s = usize::try_from(span.start - self.chunk_at).unwrap_or(0);
        Ok(self
            .chunk
            .slice(s.min(self.chunk.len())..(s + want).min(self.chunk.len())))
    }
}

/// What a transfer task shares with the server.
pub struct Shared {
    /// Counters.
    pub stats: Arc<TftpStats>,
    /// File lookup.
    pub lookup: Arc<dyn Lookup + Send + Sync>,
    /// Negotiation bounds.
    pub limits: Limits,
    /// Retransmissions before giving up.
    pub retries: u32,
    /// Local address transfer sockets bind to (port 0).
    pub bind_ip: std::net::IpAddr,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &self.limits)
            .field("bind_ip", &self.bind_ip)
            .finish_non_exhaustive()
    }
}

/// Why a transfer may be stopped from outside.
#[derive(Debug, Clone)]
pub struct Stop {
    /// The server is shutting down (the client is told with ERROR 0).
    pub shutdown: CancellationToken,
    /// The same client sent a new request (stopped silently: an ERROR to the client's port
    /// would abort its new transfer).
    pub superseded: CancellationToken,
}

/// The sending half of a transfer.
struct Sender<'a> {
    socket: &'a UdpSocket,
    peer: SocketAddr,
    name: &'a str,
    stats: &'a TftpStats,
    reader: Reader,
    oack: Vec<u8>,
    /// Reused DATA packet buffer.
    out: Vec<u8>,
    timeout: std::time::Duration,
}

impl Sender<'_> {
    /// Sends the OACK or the current window; returns the retransmission deadline, or the
    /// outcome when the file cannot be read (the client is told with ERROR 0).
    async fn send(&mut self, window: &mut Window) -> Result<tokio::time::Instant, Outcome> {
        if window.oack_pending() {
            let _ = self.socket.send_to(&self.oack, self.peer).await;
        } else {
            let len = self.reader.len();
            let mut payload = 0u64;
            let w = window.window();
            let count = w.end - w.start;
            for block in w {
                let data = match self.reader.read(window.span(block, len)).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, file = %self.name, error = %e, "tftp: read failed");
                        let err = packet::encode_error(ErrorCode::Undefined, "read error");
                        let _ = self.socket.send_to(&err, self.peer).await;
                        return Err(Outcome::IoError);
                    }
                };
                packet::encode_data(&mut self.out, Window::wire(block), &data);
                // A failed send (e.g. ENOBUFS) is like a lost packet: the timer recovers.
                let _ = self.socket.send_to(&self.out, self.peer).await;
                payload += data.len() as u64;
            }
            let resent = window.sent();
            self.stats.sent(count, payload, resent);
        }
        Ok(tokio::time::Instant::now() + self.timeout)
    }
}

/// Runs one read request from `peer` to its end. Never fails: every ending is counted and
/// logged.
pub async fn run(shared: Arc<Shared>, peer: SocketAddr, req: Request, stop: Stop) {
    let outcome = serve(&shared, peer, &req, &stop).await;
    shared.stats.request(outcome);
}

async fn serve(shared: &Arc<Shared>, peer: SocketAddr, req: &Request, stop: &Stop) -> Outcome {
    let socket = match UdpSocket::bind(SocketAddr::new(shared.bind_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, file = %req.filename, error = %e, "tftp: cannot bind a transfer socket");
            return Outcome::IoError;
        }
    };
    let decision = {
        let (shared, req) = (shared.clone(), req.clone());
        tokio::task::spawn_blocking(move || {
            handler::decide(&req, peer, shared.lookup.as_ref(), &shared.limits)
        })
        .await
    };
    // Replaced while the file was being looked up: answering now could make the client lock
    // onto this transfer's port instead of its successor's.
    if stop.superseded.is_cancelled() {
        return Outcome::Superseded;
    }
    let plan = match decision {
        Ok(Decision::Serve(plan)) => plan,
        Ok(Decision::Refuse {
            code,
            message,
            outcome,
            refusal,
        }) => {
            if let Some(r) = refusal {
                shared.stats.refused(r);
            }
            tracing::warn!(%peer, file = %req.filename, code = code.code(), %message, "tftp: request refused");
            let _ = socket
                .send_to(&packet::encode_error(code, &message), peer)
                .await;
            return outcome;
        }
        Err(e) => {
            tracing::warn!(%peer, file = %req.filename, error = %e, "tftp: lookup task failed");
            return Outcome::IoError;
        }
    };
    shared.stats.cache(plan.cache_hit);
    let started = Instant::now();
    let n = &plan.negotiated;
    let mut tx = Sender {
        socket: &socket,
        peer,
        name: &plan.name,
        stats: &shared.stats,
        reader: Reader::new(plan.source),
        oack: packet::encode_oack(&n.oack),
        out: Vec::with_capacity(usize::from(n.blksize) + 4),
        timeout: n.timeout,
    };
    let len = tx.reader.len();
    let mut window = Window::new(len, n.blksize, n.windowsize, !n.oack.is_empty());
    let mut buf = vec![0u8; MAX_DATAGRAM];

    let mut deadline = match tx.send(&mut window).await {
        Ok(d) => d,
        Err(o) => return o,
    };
    loop {
        tokio::select! {
            () = stop.superseded.cancelled() => {
                tracing::debug!(%peer, file = %plan.name, "tftp: transfer replaced by a new request from the same client");
                return Outcome::Superseded;
            }
            () = stop.shutdown.cancelled() => {
                let _ = socket
                    .send_to(&packet::encode_error(ErrorCode::Undefined, "server shutting down"), peer)
                    .await;
                tracing::warn!(%peer, file = %plan.name, "tftp: transfer stopped by shutdown");
                return Outcome::Shutdown;
            }
            () = tokio::time::sleep_until(deadline) => {
                shared.stats.timeout();
                if !window.on_timeout(shared.retries) {
                    tracing::warn!(
                        %peer, file = %plan.name, block = window.base(), retries = shared.retries,
                        "tftp: client stopped acknowledging, transfer abandoned"
                    );
                    return Outcome::TimedOut;
                }
                deadline = match tx.send(&mut window).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
            }
            r = socket.recv_from(&mut buf) => {
                let (got, from) = match r {
                    Ok(v) => v,
                    // ICMP errors surface here on some kernels; the timer handles the loss.
                    Err(_) => continue,
                };
                let datagram = buf.get(..got).unwrap_or_default();
                if from != peer {
                    shared.stats.unknown_tid();
                    tracing::debug!(%peer, %from, "tftp: packet from an unknown transfer ID");
                    let _ = socket
                        .send_to(&packet::encode_error(ErrorCode::UnknownTid, "unknown transfer ID"), from)
                        .await;
                    continue;
                }
                match packet::parse(datagram) {
                    Ok(Packet::Ack(wire)) => match window.on_ack(wire) {
                        AckEffect::Ignored => {}
                        AckEffect::Advanced => {
                            deadline = match tx.send(&mut window).await {
                                Ok(d) => d,
                                Err(o) => return o,
                            };
                        }
                        AckEffect::Done => break,
                    },
                    Ok(Packet::Error { code, message }) => {
                        // PXE ROMs routinely abort after reading tsize from the OACK.
                        tracing::debug!(%peer, file = %plan.name, code, %message, "tftp: client ended the transfer");
                        return Outcome::ClientError;
                    }
                    Ok(_) => {
                        shared.stats.malformed(Malformed::Unexpected);
                        tracing::debug!(%peer, "tftp: unexpected packet in a transfer");
                    }
                    Err(m) => {
                        shared.stats.malformed(m);
                        tracing::debug!(%peer, reason = %m, "tftp: malformed packet in a transfer");
                    }
                }
            }
        }
    }
    tracing::debug!(
        %peer,
        file = %plan.name,
        bytes = len,
        blksize = n.blksize,
        windowsize = n.windowsize,
        ms = started.elapsed().as_millis() as u64,
        "tftp: transfer complete"
    );
    Outcome::Ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lockstep_transfer_with_final_empty_block() {
        // 1024 bytes in 512-byte blocks: two full blocks and an empty third.
        let mut w = Window::new(1024, 512, 1, false);
        assert_eq!(w.last(), 3);
        assert_eq!(w.window(), 1..2);
        assert_eq!(w.sent(), 0);
        assert_eq!(w.on_ack(0), AckEffect::Ignored);
        assert_eq!(w.on_ack(1), AckEffect::Advanced);
        assert_eq!(w.window(), 2..3);
        assert_eq!(w.sent(), 0);
        // A duplicate ACK of block 1 must not trigger a resend (Sorcerer's Apprentice).
        assert_eq!(w.on_ack(1), AckEffect::Ignored);
        assert_eq!(w.on_ack(2), AckEffect::Advanced);
        assert_eq!(w.window(), 3..4);
        assert_eq!(w.span(3, 1024), 1024..1024);
        w.sent();
        assert_eq!(w.on_ack(3), AckEffect::Done);
    }

    #[test]
    fn oack_waits_for_ack_zero() {
        let mut w = Window::new(10, 512, 4, true);
        assert!(w.oack_pending());
        assert_eq!(w.on_ack(1), AckEffect::Ignored);
        assert_eq!(w.on_ack(0), AckEffect::Advanced);
        assert!(!w.oack_pending());
        assert_eq!(w.window(), 1..2);
        w.sent();
        assert_eq!(w.on_ack(1), AckEffect::Done);
    }

    #[test]
    fn windows_slide_and_resend_from_partial_ack() {
        // 10 blocks of 100 bytes + empty 11th, window 4.
        let mut w = Window::new(1000, 100, 4, false);
        assert_eq!(w.window(), 1..5);
        assert_eq!(w.sent(), 0);
        // Unsent blocks cannot be acknowledged.
        assert_eq!(w.on_ack(6), AckEffect::Ignored);
        // Client got 1 and 2 only: resend from 3.
        assert_eq!(w.on_ack(2), AckEffect::Advanced);
        assert_eq!(w.window(), 3..7);
        assert_eq!(w.sent(), 2, "blocks 3 and 4 go out again");
        assert_eq!(w.on_ack(6), AckEffect::Advanced);
        assert_eq!(w.window(), 7..11);
        w.sent();
        assert_eq!(w.on_ack(10), AckEffect::Advanced);
        assert_eq!(w.window(), 11..12);
        w.sent();
        assert_eq!(w.on_ack(11), AckEffect::Done);
    }

    #[test]
    fn timeouts_retransmit_then_give_up() {
        let mut w = Window::new(1000, 100, 4, false);
        w.sent();
        assert!(w.on_timeout(2));
        assert_eq!(w.sent(), 4);
        assert!(w.on_timeout(2));
        assert!(!w.on_timeout(2));
        // Progress resets the count.
        let mut w = Window::new(1000, 100, 4, false);
        w.sent();
        assert!(w.on_timeout(1));
        assert_eq!(w.on_ack(1), AckEffect::Advanced);
        assert!(w.on_timeout(1));
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let len = 70_000 * 8;
        let mut w = Window::new(len, 8, 16, false);
        let mut acks = 0u32;
        loop {
            let win = w.window();
            w.sent();
            let last = win.end - 1;
            if last == 65_536 || win.contains(&65_536) {
                assert_eq!(Window::wire(65_536), 0);
                assert_eq!(Window::wire(65_537), 1);
            }
            acks += 1;
            match w.on_ack(Window::wire(last)) {
                AckEffect::Done => break,
                AckEffect::Advanced => {}
                AckEffect::Ignored => panic!("ack {last} ignored"),
            }
        }
        assert_eq!(w.base(), 70_002);
        assert!(acks > 4000);
    }

    #[tokio::test]
    async fn reader_streams_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        let data: Vec<u8> = (0..(3 * CHUNK_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let file = Arc::new(std::fs::File::open(&p).unwrap());
        let mut r = Reader::new(Source::File {
            file,
            len: data.len() as u64,
        });
        let mut got = Vec::new();
        let mut at = 0u64;
        while at < data.len() as u64 {
            let end = (at + 1468).min(data.len() as u64);
            got.extend_from_slice(&r.read(at..end).await.unwrap());
            at = end;
        }
        assert_eq!(got, data);
        // Going back (a retransmitted window) rereads.
        assert_eq!(&r.read(0..4).await.unwrap()[..], &data[..4]);
        let mut m = Reader::new(Source::Memory(Bytes::from_static(b"abc")));
        assert_eq!(&m.read(1..5).await.unwrap()[..], b"bc");
        assert!(m.read(3..3).await.unwrap().is_empty());
    }
}
