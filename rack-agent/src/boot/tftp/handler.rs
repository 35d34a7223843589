//! TFTP policy, free of sockets: what a datagram on the listen port means, how a requested
//! name is confined to the root, which options are accepted, and where a file comes from
//! (generated per node, the root directory, or the fixed iPXE binary names).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::cache::{read_exact_len, FileCache};
use super::packet::{self, ErrorCode, Malformed, Mode, Packet, Request};
use super::stats::{Outcome, Refusal};
use crate::boot::{GeneratedFiles, IPXE_BIOS, IPXE_EFI_ARM64, IPXE_EFI_X64};

/// iPXE's UEFI SNP-only build, served beside the names DHCP hands out.
pub const IPXE_SNPONLY: &str = "snponly.efi";

/// The iPXE binaries served from `ipxe_dir` when the root has no file of that name: an
/// explicit list, so client input is never joined onto `ipxe_dir`.
pub const IPXE_NAMES: [&str; 4] = [IPXE_BIOS, IPXE_EFI_X64, IPXE_EFI_ARM64, IPXE_SNPONLY];

/// What the listener does with one datagram on the listen port.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenDecision {
    /// A read request: start a transfer on a fresh port.
    Start(Request),
    /// Answer with an ERROR from the listen port and count `outcome` (and `malformed`).
    Reply {
        /// Error code sent.
        code: ErrorCode,
        /// Error message sent.
        message: &'static str,
        /// How the request is counted.
        outcome: Outcome,
        /// Also counted as malformed, if set.
        malformed: Option<Malformed>,
    },
    /// Count and drop silently (no reply, so a spoofed source gains nothing).
    Drop(Malformed),
}

/// Classifies a datagram that arrived on the listen port.
pub fn classify(datagram: &[u8]) -> ListenDecision {
    match packet::parse(datagram) {
        Ok(Packet::Rrq(req)) => ListenDecision::Start(req),
        Ok(Packet::Wrq(_)) => ListenDecision::Reply {
            code: ErrorCode::AccessViolation,
            message: "read-only server",
            outcome: Outcome::WriteRefused,
            malformed: None,
        },
        Ok(Packet::Unknown(_)) => ListenDecision::Reply {
            code: ErrorCode::IllegalOperation,
            message: "illegal TFTP operation",
            outcome: Outcome::IllegalOperation,
            malformed: Some(Malformed::UnknownOpcode),
        },
        Err(Malformed::BadMode) => ListenDecision::Reply {
            code: ErrorCode::IllegalOperation,
            message: "unsupported transfer mode",
            outcome: Outcome::IllegalOperation,
            malformed: Some(Malformed::BadMode),
        },
        Ok(Packet::Data { .. } | Packet::Ack(_) | Packet::Error { .. } | Packet::Oack) => {
            ListenDecision::Drop(Malformed::Unexpected)
        }
        Err(m) => ListenDecision::Drop(m),
    }
}

/// The requested name made relative to the root: leading `/` accepted (PXE clients send
/// `/pxelinux.0`), empty and `.` components dropped, `..` and NUL/backslash/control
/// characters refused.
pub fn normalise(name: &str) -> Result<String, Refusal> {
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(Refusal::BadCharacter);
    }
    let mut parts = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(Refusal::Traversal),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(Refusal::NotRegular);
    }
    Ok(parts.join("/"))
}

/// Bytes to serve: in memory (generated, cached, netascii) or streamed from an open file.
#[derive(Debug, Clone)]
pub enum Source {
    /// The whole content.
    Memory(Bytes),
    /// A regular file of `len` bytes, read in chunks as blocks are sent.
    File {
        /// The open file.
        file: Arc<File>,
        /// Its length when opened (the `tsize` promised).
        len: u64,
    },
}

impl Source {
    /// Bytes that will be sent.
    pub fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    /// Whether nothing will be sent but the final empty block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a lookup produced no file.
#[derive(Debug)]
pub enum LookupError {
    /// No such file anywhere (ERROR 1).
    NotFound,
    /// The path is refused (ERROR 2, counted by reason).
    Refused(Refusal),
    /// The file exists but could not be read.
    Io(io::Error),
    /// Netascii asked for a file above [`MAX_NETASCII_BYTES`].
    TooLargeForNetascii,
}

/// Largest file sent in netascii mode. Netascii is converted in memory per transfer, so
/// without a bound, concurrent netascii requests for a large image would each hold a copy;
/// boot files go in octet mode anyway.
pub const MAX_NETASCII_BYTES: u64 = 16 << 20;

/// Where files come from. Implemented over the filesystem by [`FsLookup`]; blocking.
pub trait Lookup {
    /// The content of `name` (already [`normalise`]d) for `peer`, converted for `mode`, and
    /// whether it came from the cache.
    fn find(&self, name: &str, peer: SocketAddr, mode: Mode)
        -> Result<(Source, bool), LookupError>;
}

/// The server's lookup: generated files, then the root directory, then the iPXE binaries.
pub struct FsLookup {
    /// Canonical root directory.
    pub root: PathBuf,
    /// Directory of the iPXE binaries.
    pub ipxe_dir: PathBuf,
    /// Per-node generated files.
    pub generated: Option<Arc<dyn GeneratedFiles>>,
    /// Content cache.
    pub cache: Arc<FileCache>,
}

impl std::fmt::Debug for FsLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsLookup")
            .field("root", &self.root)
            .field("ipxe_dir", &self.ipxe_dir)
            .finish_non_exhaustive()
    }
}

fn convert(data: Bytes, mode: Mode) -> Bytes {
    match mode {
        Mode::Octet => data,
        Mode::Netascii => Bytes::from(packet::to_netascii(&data)),
    }
}

impl FsLookup {
    /// Opens `path` (known to be inside the root or one of the fixed iPXE paths).
    fn open(&self, path: &Path, mode: Mode) -> Result<(Source, bool), LookupError> {
        let meta = std::fs::metadata(path).map_err(LookupError::Io)?;
        if !meta.is_file() {
            // Checked before opening: opening a FIFO would block the thread.
            return Err(LookupError::Refused(Refusal::NotRegular));
        }
        let mut file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => LookupError::Refused(Refusal::NotRegular),
            _ => LookupError::Io(e),
        })?;
        let meta = file.metadata().map_err(LookupError::Io)?;
        let len = meta.len();
        if mode == Mode::Netascii && len > MAX_NETASCII_BYTES {
            return Err(LookupError::TooLargeForNetascii);
        }
        if self.cache.admits(len) {
            let (data, hit) = self
                .cache
                .get_or_load(path, &mut file, len, meta.modified().ok())
                .map_err(LookupError::Io)?;
            return Ok((Source::Memory(convert(data, mode)), hit));
        }
        match mode {
            Mode::Octet => Ok((
                Source::File {
                    file: Arc::new(file),
                    len,
                },
                false,
            )),
            Mode::Netascii => {
                let data = read_exact_len(&mut file, len).map_err(LookupError::Io)?;
                Ok((Source::Memory(convert(data, mode)), false))
            }
        }
    }
}

impl Lookup for FsLookup {
    fn find(
        &self,
        name: &str,
        peer: SocketAddr,
        mode: Mode,
    ) -> Result<(Source, bool), LookupError> {
        if let Some(g) = &self.generated {
            if let Some(data) = g.generate(name, peer) {
                return Ok((Source::Memory(convert(Bytes::from(data), mode)), false));
            }
        }
        match std::fs::canonicalize(self.root.join(name)) {
            Ok(real) if !real.starts_with(&self.root) => {
                return Err(LookupError::Refused(Refusal::Escape))
            }
            Ok(real) => return self.open(&real, mode),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(LookupError::Refused(Refusal::NotRegular))
            }
            Err(e) => return Err(LookupError::Io(e)),
        }
        match IPXE_NAMES.iter().find(|n| **n == name) {
            Some(fixed) => match self.open(&self.ipxe_dir.join(fixed), mode) {
                Err(LookupError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    Err(LookupError::NotFound)
                }
                other => other,
            },
            None => Err(LookupError::NotFound),
        }
    }
}

/// Server-side bounds on option negotiation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `blksize` granted.
    pub max_blksize: u16,
    /// Largest `windowsize` granted.
    pub max_windowsize: u16,
    /// Retransmission timeout without a `timeout` option.
    pub timeout: Duration,
}

/// Transfer parameters after option negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block (512 without the option).
    pub blksize: u16,
    /// Blocks per window (1 without the option).
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Accepted options to acknowledge, in the client's order; empty: no OACK is sent.
    pub oack: Vec<(String, String)>,
}

/// Applies RFC 2347/2348/2349/7440 to the client's options. Unknown and invalid options are
/// ignored (left out of the OACK, so the client falls back to the default); `tsize` is
/// answered with `size` when known (octet mode).
pub fn negotiate(options: &[(String, String)], size: Option<u64>, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.timeout,
        oack: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        let granted = match name.as_str() {
            "blksize" if v >= 8 => {
                let b = v.min(u64::from(limits.max_blksize)).min(65_464);
                n.blksize = u16::try_from(b).unwrap_or(512);
                b
            }
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                v
            }
            "windowsize" if (1..=65_535).contains(&v) => {
                let w = v.min(u64::from(limits.max_windowsize));
                n.windowsize = u16::try_from(w).unwrap_or(1);
                w
            }
            "tsize" => match size {
                Some(s) => s,
                None => continue,
            },
            _ => continue,
        };
        n.oack.push((name.clone(), granted.to_string()));
    }
    n
}

/// A read request accepted for serving.
#[derive(Debug)]
pub struct Plan {
    /// The normalised name.
    pub name: String,
    /// What to send.
    pub source: Source,
    /// Negotiated parameters.
    pub negotiated: Negotiated,
    /// Whether the content came from the cache.
    pub cache_hit: bool,
}

/// The answer to a read request.
#[derive(Debug)]
pub enum Decision {
    /// Serve the file.
    Serve(Plan),
    /// Answer with ERROR.
    Refuse {
        /// Code sent.
        code: ErrorCode,
        /// Message sent.
        message: String,
        /// How it is counted.
        outcome: Outcome,
        /// The path refusal, if that is why.
        refusal: Option<Refusal>,
    },
}

fn refused(r: Refusal) -> Decision {
    let (code, message) = match r {
        Refusal::NotRegular => (ErrorCode::AccessViolation, "Not a regular file"),
        _ => (ErrorCode::AccessViolation, "Access violation"),
    };
    Decision::Refuse {
        code,
        message: message.to_owned(),
        outcome: Outcome::AccessViolation,
        refusal: Some(r),
    }
}

/// Decides a read request from `peer`: confine the name, find the file, negotiate options.
pub fn decide(req: &Request, peer: SocketAddr, lookup: &dyn Lookup, limits: &Limits) -> Decision {
    let name = match normalise(&req.filename) {
        Ok(n) => n,
        Err(r) => return refused(r),
    };
    let (source, cache_hit) = match lookup.find(&name, peer, req.mode) {
        Ok(s) => s,
        Err(LookupError::NotFound) => {
            return Decision::Refuse {
                code: ErrorCode::FileNotFound,
                message: "File not found".to_owned(),
                outcome: Outcome::NotFound,
                refusal: None,
            }
        }
        Err(LookupError::Refused(r)) => return refused(r),
        Err(LookupError::TooLargeForNetascii) => {
            return Decision::Refuse {
                code: ErrorCode::IllegalOperation,
                message: "file too large for netascii, use octet".to_owned(),
                outcome: Outcome::IllegalOperation,
                refusal: None,
            }
        }
        Err(LookupError::Io(e)) => {
            return Decision::Refuse {
                code: ErrorCode::Undefined,
                message: format!("read error: {e}"),
                outcome: Outcome::IoError,
                refusal: None,
            }
        }
    };
    // tsize in netascii would have to count converted bytes; like tftp-hpa, only octet
    // transfers announce it.
    let size = (req.mode == Mode::Octet).then(|| source.len());
    Decision::Serve(Plan {
        name,
        negotiated: negotiate(&req.options, size, limits),
        source,
        cache_hit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        timeout: Duration::from_secs(1),
    };

    #[test]
    fn classify_listen_datagrams() {
        let rrq = packet::encode_rrq("a", "octet", &[]);
        assert!(matches!(classify(&rrq), ListenDecision::Start(_)));
        let mut wrq = rrq.clone();
        wrq[1] = 2;
        assert!(matches!(
            classify(&wrq),
            ListenDecision::Reply {
                code: ErrorCode::AccessViolation,
                outcome: Outcome::WriteRefused,
                ..
            }
        ));
        assert!(matches!(
            classify(&[0, 42, 1]),
            ListenDecision::Reply {
                code: ErrorCode::IllegalOperation,
                ..
            }
        ));
        assert!(matches!(
            classify(b"\x00\x01f\x00mail\x00"),
            ListenDecision::Reply {
                code: ErrorCode::IllegalOperation,
                malformed: Some(Malformed::BadMode),
                ..
            }
        ));
        assert_eq!(
            classify(&packet::encode_ack(1)),
            ListenDecision::Drop(Malformed::Unexpected)
        );
        assert_eq!(classify(b"x"), ListenDecision::Drop(Malformed::Short));
        assert_eq!(
            classify(b"\x00\x01abc"),
            ListenDecision::Drop(Malformed::Unterminated)
        );
    }

    #[test]
    fn normalise_confines_names() {
        assert_eq!(normalise("/pxelinux.0").unwrap(), "pxelinux.0");
        assert_eq!(normalise("//a/./b//c").unwrap(), "a/b/c");
        assert_eq!(normalise("../etc/passwd"), Err(Refusal::Traversal));
        assert_eq!(normalise("/../../etc/passwd"), Err(Refusal::Traversal));
        assert_eq!(normalise("a/../../b"), Err(Refusal::Traversal));
        assert_eq!(normalise("a\\..\\b"), Err(Refusal::BadCharacter));
        assert_eq!(normalise("a\0b"), Err(Refusal::BadCharacter));
        assert_eq!(normalise("a\nb"), Err(Refusal::BadCharacter));
        assert_eq!(normalise("/"), Err(Refusal::NotRegular));
        assert_eq!(normalise("..foo").unwrap(), "..foo");
    }

    #[test]
    fn negotiate_options() {
        let n = negotiate(&[], Some(10), &LIMITS);
        assert_eq!((n.blksize, n.windowsize, n.oack.len()), (512, 1, 0));

        let n = negotiate(
            &opts(&[
                ("blksize", "1428"),
                ("tsize", "0"),
                ("windowsize", "16"),
                ("timeout", "3"),
                ("multicast", ""),
            ]),
            Some(12345),
            &LIMITS,
        );
        assert_eq!(n.blksize, 1428);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            opts(&[
                ("blksize", "1428"),
                ("tsize", "12345"),
                ("windowsize", "16"),
                ("timeout", "3")
            ])
        );

        // Capped to the server's limits; invalid values ignored; first of duplicates wins.
        let n = negotiate(
            &opts(&[
                ("blksize", "65464"),
                ("blksize", "512"),
                ("windowsize", "1000"),
                ("timeout", "0"),
            ]),
            None,
            &LIMITS,
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert_eq!(n.oack, opts(&[("blksize", "1468"), ("windowsize", "64")]));

        let n = negotiate(
            &opts(&[("blksize", "7"), ("windowsize", "0"), ("tsize", "x")]),
            Some(1),
            &LIMITS,
        );
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert!(n.oack.is_empty());

        // tsize without a known size (netascii) is not acknowledged.
        assert!(negotiate(&opts(&[("tsize", "0")]), None, &LIMITS)
            .oack
            .is_empty());
    }

    struct MapLookup(HashMap<&'static str, &'static [u8]>);

    impl Lookup for MapLookup {
        fn find(
            &self,
            name: &str,
            _: SocketAddr,
            mode: Mode,
        ) -> Result<(Source, bool), LookupError> {
            match self.0.get(name) {
                Some(b) => Ok((Source::Memory(convert(Bytes::from_static(b), mode)), false)),
                None => Err(LookupError::NotFound),
            }
        }
    }

    #[test]
    fn decide_serves_refuses_and_converts() {
        let peer: SocketAddr = "10.0.0.9:2000".parse().unwrap();
        let lookup = MapLookup(HashMap::from([("boot/a.txt", &b"x\ny"[..])]));
        let req = |name: &str, mode, options: &[(&str, &str)]| Request {
            filename: name.to_owned(),
            mode,
            options: opts(options),
        };
        let Decision::Serve(p) = decide(
            &req("/boot/a.txt", Mode::Octet, &[("tsize", "0")]),
            peer,
            &lookup,
            &LIMITS,
        ) else {
            panic!("refused");
        };
        assert_eq!(p.source.len(), 3);
        assert_eq!(p.negotiated.oack, opts(&[("tsize", "3")]));
        let Decision::Serve(p) = decide(
            &req("boot/a.txt", Mode::Netascii, &[("tsize", "0")]),
            peer,
            &lookup,
            &LIMITS,
        ) else {
            panic!("refused");
        };
        assert_eq!(p.source.len(), 4);
        assert!(p.negotiated.oack.is_empty());
        assert!(matches!(
            decide(&req("nope", Mode::Octet, &[]), peer, &lookup, &LIMITS),
            Decision::Refuse {
                code: ErrorCode::FileNotFound,
                ..
            }
        ));
        assert!(matches!(
            decide(&req("../x", Mode::Octet, &[]), peer, &lookup, &LIMITS),
            Decision::Refuse {
                code: ErrorCode::AccessViolation,
                refusal: Some(Refusal::Traversal),
                ..
            }
        ));
    }

    struct Gen;
    impl GeneratedFiles for Gen {
        fn generate(&self, path: &str, _: SocketAddr) -> Option<Vec<u8>> {
            (path == "node.cfg").then(|| b"generated".to_vec())
        }
    }

    fn fs_lookup(root: &Path, ipxe: &Path) -> FsLookup {
        FsLookup {
            root: std::fs::canonicalize(root).unwrap(),
            ipxe_dir: ipxe.to_path_buf(),
            generated: Some(Arc::new(Gen)),
            cache: Arc::new(FileCache::new(1 << 20)),
        }
    }

    fn bytes_of(r: Result<(Source, bool), LookupError>) -> Vec<u8> {
        match r {
            Ok((Source::Memory(b), _)) => b.to_vec(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fs_lookup_order_and_confinement() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let ipxe = tmp.path().join("ipxe");
        let outside = tmp.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&ipxe).unwrap();
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::write(root.join("sub/file"), b"in root").unwrap();
        std::fs::write(root.join("ipxe.efi"), b"root copy").unwrap();
        std::fs::write(ipxe.join("ipxe.efi"), b"ipxe copy").unwrap();
        std::fs::write(ipxe.join("undionly.kpxe"), b"undi").unwrap();
        std::fs::write(ipxe.join("other.bin"), b"not served").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("inside-link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("updir")).unwrap();
        let l = fs_lookup(&root, &ipxe);
        let peer: SocketAddr = "10.0.0.9:2000".parse().unwrap();
        let find = |n: &str| l.find(n, peer, Mode::Octet);

        assert_eq!(bytes_of(find("node.cfg")), b"generated");
        assert_eq!(bytes_of(find("sub/file")), b"in root");
        assert_eq!(bytes_of(find("inside-link")), b"in root");
        assert_eq!(bytes_of(find("ipxe.efi")), b"root copy");
        assert_eq!(bytes_of(find("undionly.kpxe")), b"undi");
        assert!(matches!(find("other.bin"), Err(LookupError::NotFound)));
        assert!(matches!(find("snponly.efi"), Err(LookupError::NotFound)));
        assert!(matches!(find("missing"), Err(LookupError::NotFound)));
        assert!(matches!(
            find("escape"),
            Err(LookupError::Refused(Refusal::Escape))
        ));
        assert!(matches!(
            find("updir/secret"),
            Err(LookupError::Refused(Refusal::Escape))
        ));
        assert!(matches!(
            find("sub"),
            Err(LookupError::Refused(Refusal::NotRegular))
        ));
        assert!(matches!(find("sub/file/x"), Err(LookupError::NotFound)));
        let big = std::fs::File::create(root.join("big")).unwrap();
        big.set_len(MAX_NETASCII_BYTES + 1).unwrap();
        assert!(matches!(
            l.find("big", peer, Mode::Netascii),
            Err(LookupError::TooLargeForNetascii)
        ));
        assert_eq!(
            bytes_of(l.find("node.cfg", peer, Mode::Netascii)),
            b"generated"
        );
    }

    #[test]
    fn large_files_stream_when_the_cache_cannot_hold_them() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("big"), vec![1u8; 4096]).unwrap();
        let mut l = fs_lookup(tmp.path(), tmp.path());
        l.cache = Arc::new(FileCache::new(1024));
        let peer: SocketAddr = "10.0.0.9:2000".parse().unwrap();
        assert!(matches!(
            l.find("big", peer, Mode::Octet),
            Ok((Source::File { len: 4096, .. }, false))
        ));
    }
}
